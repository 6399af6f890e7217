import pytest

from lcm import config as config_lib
from lcm import main


@pytest.mark.multidevice
def test_main_job_runs_on_a_context_mesh(devices8, capsys):
    config = config_lib.base_config()
    config.mesh.shape = (2, 1, 4, 1)
    main.run(config)
    out = capsys.readouterr().out
    assert "mesh: data=2 fsdp=1 context=4 tensor=1" in out
    assert "matches numpy" in out


def test_main_job_rejects_bad_config():
    config = config_lib.base_config()
    config.model.num_layers = 0
    with pytest.raises(ValueError, match=r"config\.model\.num_layers = 0"):
        main.run(config)
