"""The decoder-only transformer: ``build_spec(config)`` then ``Transformer(spec)``."""

from lcm.model.spec import LayerPlan as LayerPlan
from lcm.model.spec import ModelSpec as ModelSpec
from lcm.model.spec import build_spec as build_spec
from lcm.model.spec import mask_for as mask_for
from lcm.model.transformer import Transformer as Transformer
