"""Device mesh and logical-axis sharding (the only place mesh axis names appear in code)."""

from lcm.parallel.mesh import make_mesh as make_mesh
from lcm.parallel.sharding import constrain as constrain
from lcm.parallel.sharding import named_sharding as named_sharding
