"""experiments.pod_scale: merging new cells into the committed table."""

from experiments.pod_scale import run as pod_scale


def _cell(model, slice_name, seq_len, trains):
    return {"model": model, "slice": slice_name, "seq_len": seq_len, "trains": trains}


def test_merge_replaces_same_cell_and_keeps_grid_order():
    models, slices = list(pod_scale.MODELS), list(pod_scale.SLICES)
    old = [_cell(models[1], slices[0], 1 << 20, False), _cell(models[0], slices[1], 1 << 17, True)]
    new = [_cell(models[1], slices[0], 1 << 20, True), _cell(models[0], slices[0], 1 << 15, True)]
    got = pod_scale.merged(old, new)
    assert [(c["model"], c["slice"], c["seq_len"]) for c in got] == [
        (models[0], slices[0], 1 << 15),
        (models[0], slices[1], 1 << 17),
        (models[1], slices[0], 1 << 20),
    ]
    assert got[2]["trains"] is True  # the new cell wins
