"""Generated proxy datasets (suite/workloads/proxy_data.py) and the train_proxy workload."""
import math
from pathlib import Path

import pytest
import torch
from suite.workloads import proxy_data as P
from suite.config import BadInput

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("make,size", [(P.pathfinder, 32), (P.pathfinder, 64), (P.match, 32), (P.match, 48)])
def test_image_tasks_are_seeded_balanced_and_shaped(make, size):
    x, y = make(40, size, seed=3)
    x2, y2 = make(40, size, seed=3)
    x3, _ = make(40, size, seed=4)
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    assert x.shape == (40, 1, size, size) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert int(y.sum()) == 20  # exactly balanced
    assert (x.flatten(1) > 0).any(1).all()  # every image has something drawn


def test_pathfinder_markers_are_far_apart_in_both_classes():
    # markers are the only 3x3 blocks of lit pixels at 32 px (lines are 1 px wide,
    # but crossings can make more): at least two per image
    x, y = P.pathfinder(20, 32, seed=0)
    lit = torch.nn.functional.avg_pool2d((x > 0).double(), 3, stride=1) == 1
    assert (lit.flatten(1).sum(1) >= 2).all()


def test_match_labels_follow_the_glyphs():
    x, y = P.match(30, 32, seed=1)
    side = 4
    for img, label in zip(x[:, 0], y):
        left, right = img[:, : 32 // 3 + 1], img[:, 32 - (32 // 3 + 1) :]
        crops = []
        for half in (left, right):
            r, c = [int(i) for i in (half > 0).nonzero().min(0).values]
            rs, cs = r - r % side, c - (c % side if half is left else (c + 32 - half.shape[1]) % side)
            crops.append(half[rs : rs + side, cs : cs + side])
        assert torch.equal(crops[0], crops[1]) == bool(label)


def test_glyph_alphabet_is_fixed_distinct_and_equally_bright():
    g = P.glyphs(4)
    assert (g == P.glyphs(4)).all() and g.shape == (10, 4, 4)
    assert len({a.tobytes() for a in g}) == 10 and len({int((a > 0).sum()) for a in g}) == 1


@pytest.mark.parametrize("text,value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 2 9 [MAX 4 7 ] 0 ]", 0),
    ("[SM 9 9 5 ]", 3),
    ("[MED 3 1 7 ]", 3),
    ("[MED 1 2 6 9 ]", 4),  # even count: floor of the mean of the middle two
    ("[MED 1 4 ]", 2),
    ("[SM [MAX 1 8 ] [MIN 7 3 ] [MED 5 5 0 ] ]", 6),
    ("[MAX [MIN [SM 5 6 ] 9 ] [MED 2 [SM 9 1 ] 3 ] ]", 2),
    ("7", 7),
])
def test_listops_evaluator_on_hand_written_examples(text, value):
    tree = P.parse(text)
    assert P.evaluate(tree) == value
    assert P.to_text(tree) == text
    assert P.from_tokens(P.to_tokens(tree)) == text


def test_listops_is_seeded_balanced_and_labels_match_the_tokens():
    x, y = P.listops(100, 64, seed=5, max_depth=3, max_args=5)
    x2, y2 = P.listops(100, 64, seed=5, max_depth=3, max_args=5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, P.listops(100, 64, seed=6, max_depth=3, max_args=5)[0])
    assert x.shape == (100, 64) and torch.bincount(y, minlength=10).tolist() == [10] * 10
    assert int(x.max()) < P.VOCAB
    for toks, label in zip(x, y):
        n = int((toks != P.PAD).sum())
        assert 16 <= n <= 64 and (toks[n:] == P.PAD).all()  # padding only at the end
        assert P.evaluate(P.parse(P.from_tokens(toks))) == int(label)


def test_listops_grid_side_must_be_square():
    assert P.square_side(1024) == 32
    with pytest.raises(ValueError, match="valid seq_len near it: 121, 144"):
        P.square_side(130)


TINY = ["workload=train_proxy", "model=vit_t", "device=cpu", "model.embed_dim=24", "proxy.max_blocks=1",
        "proxy.steps=4", "proxy.batch_size=8", "proxy.train_size=40", "proxy.test_size=20", "proxy.warmup_steps=2"]


@pytest.mark.parametrize("task,extra", [
    ("match", ["proxy.image_size=24"]),
    ("pathfinder", ["proxy.image_size=16"]),
    ("listops", ["proxy.seq_len=16", "proxy.max_depth=2"]),
    ("match", ["proxy.image_size=32", "model=swin_t"]),  # hierarchical: 8x8 -> 1x1 grids
    ("listops", ["proxy.seq_len=64", "proxy.max_depth=2", "model=cswin_t", "model.embed_dim=16"]),
])
def test_train_proxy_end_to_end(run_job, tmp_path, task, extra, capsys):
    (rec,) = run_job([*TINY, f"proxy={task}", "attention=elfatt", *extra], tmp_path)
    assert rec.status == "ok", rec.reason
    assert rec.proxy_task == task and rec.proxy_steps == 4 and rec.proxy_eval_items == 20
    assert 0 <= rec.proxy_top1 <= 1 and rec.proxy_steps_per_s > 0 and rec.proxy_wall_s > 0
    model = next((e.split("=")[1] for e in extra if e.startswith("model=")), "vit_t")
    assert math.isfinite(rec.proxy_train_loss) and rec.model == model and rec.workload == "train_proxy"
    assert (tmp_path / "records.parquet").exists()
    assert "[train_proxy] step 4/4 loss" in capsys.readouterr().out  # progress while it trains


def test_train_proxy_is_deterministic(run_job, tmp_path):
    a = run_job([*TINY, "proxy.image_size=24", "attention=sdpa"], tmp_path / "a")[0]
    b = run_job([*TINY, "proxy.image_size=24", "attention=sdpa"], tmp_path / "b")[0]
    assert a.proxy_train_loss == b.proxy_train_loss and a.proxy_top1 == b.proxy_top1


def test_train_proxy_bad_settings_are_one_clear_line(run_job, tmp_path):
    for overrides, match in [(["proxy=listops", "proxy.seq_len=50"], "not a square number"),
                             (["proxy.task=mnist"], "valid choices: match, pathfinder, listops"),
                             (["proxy.max_blocks=0"], "proxy.max_blocks=0 is not valid; valid: a number >= 1"),
                             (["proxy.steps=-3"], "proxy.steps=-3 is not valid; valid: a number >= 1"),
                             (["proxy.image_size=30"], "valid resolutions")]:
        with pytest.raises(BadInput, match=match):
            run_job([*TINY, *overrides], tmp_path)
