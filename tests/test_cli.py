"""The command line end to end on a tiny image, and its one-line errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_spoco.cli import main


def test_train_predict_evaluate_end_to_end(folders, capsys):
    model = folders / "model.pt"
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(model), "--steps", "3", "--device", "cpu", "--seed", "1"]) == 0
    assert model.is_file()
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred"), "--device", "cpu"]) == 0
    pred = tifffile.imread(folders / "pred" / "cells.tif")
    assert pred.shape == (64, 64) and pred.dtype == np.uint16
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["mean"]) >= {"AP50", "mAP", "SBD", "DiC"}
    assert set(result["images"]) == {"cells"}
    assert main(["evaluate", "--pred", str(folders / "gt"), "--gt", str(folders / "gt")]) == 0
    table = capsys.readouterr().out
    assert "AP50" in table and "1.000" in table


def test_existing_outputs_are_not_overwritten_without_asking(folders, capsys):
    model = folders / "model.pt"
    model.write_bytes(b"the user's precious model")
    code = main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(model), "--steps", "1"])
    assert code == 2 and model.read_bytes() == b"the user's precious model"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train", "--images", "nowhere", "--labels", "nowhere", "--out", "m.pt"], "does not exist"),
    (["predict", "--model", "missing.pt", "--images", ".", "--out", "x"], "does not exist"),
    (["evaluate", "--pred", "nowhere", "--gt", "nowhere"], "does not exist"),
])
def test_bad_input_gives_one_line_and_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_foreign_model_and_shape_mismatch_are_explained(folders, capsys):
    import torch

    torch.save({"weights": torch.zeros(3)}, folders / "other.pt")
    assert main(["predict", "--model", str(folders / "other.pt"), "--images", str(folders / "images"),
                 "--out", str(folders / "p")]) == 2
    assert "not a napari-spoco model" in capsys.readouterr().err
    tifffile.imwrite(folders / "labels" / "cells.tif", np.zeros((10, 10), np.uint16))
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(folders / "m.pt"), "--steps", "1"]) == 2
    assert "does not match" in capsys.readouterr().err


def test_train_scale_is_kept_in_the_model_and_predictions_come_back_full_size(folders, capsys):
    from napari_spoco.io import load_model

    model = folders / "half.pt"
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(model), "--steps", "2", "--device", "cpu", "--init", "none",
                 "--scale", "0.5"]) == 0
    assert load_model(model).pixel_scale == 0.5
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred"), "--device", "cpu"]) == 0
    assert tifffile.imread(folders / "pred" / "cells.tif").shape == (64, 64)
    capsys.readouterr()
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(folders / "bad.pt"), "--steps", "1", "--scale", "0"]) == 2
    err = capsys.readouterr().err
    assert "Scale 0.0 is outside" in err and "Traceback" not in err


def test_train_scale_jitter_reaches_the_model_and_is_checked(folders, capsys):
    """--scale-jitter is TrainConfig.scale_jitter: recorded in the model's history and said on
    the terminal (a number before training; the automatic choice after it, from the model's
    record, with the count the library found); by default (auto) on for a painting of a few
    objects, as here, and off at 1; a value below 1 (a shrink-only zoom is not what it means) is
    one line, not a traceback."""
    from napari_spoco.io import load_model
    from napari_spoco.training import FEW_PAINTED, SCALE_JITTER

    painted = len(np.unique(tifffile.imread(folders / "labels" / "cells.tif"))) - 1
    assert 1 < painted < FEW_PAINTED  # the case the automatic choice zooms
    base = ["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"), "--steps", "1",
            "--device", "cpu", "--init", "none", "--patch-size", "32", "32", "--batch-size", "2"]
    assert main(base + ["--out", str(folders / "zoom.pt"), "--scale-jitter", "2"]) == 0
    assert load_model(folders / "zoom.pt").history["scale_jitter"] == 2.0
    assert "zoomed by up to 2x either way in Y and X (--scale-jitter)" in capsys.readouterr().err
    for name, extra in (("default.pt", []), ("auto.pt", ["--scale-jitter", "AUTO"])):
        assert main(base + ["--out", str(folders / name)] + extra) == 0
        history = load_model(folders / name).history
        assert history["scale_jitter"] == SCALE_JITTER and history["scale_jitter_auto"]
        assert history["painted_objects"] == painted
        assert (f"Patches were zoomed by up to {SCALE_JITTER:g}x, as only {painted} objects are painted "
                "(--scale-jitter 1 turns it off)") in capsys.readouterr().err
    assert main(base + ["--out", str(folders / "plain.pt"), "--scale-jitter", "1"]) == 0
    assert load_model(folders / "plain.pt").history["scale_jitter"] == 1.0
    assert "zoomed" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--out", str(folders / "bad.pt"), "--scale-jitter", "0.5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'auto' or a number from 1 (off) to 4" in err and "Traceback" not in err and not (folders / "bad.pt").exists()


def test_predict_puts_the_method_in_the_cluster_config(folders, monkeypatch):
    """--method and the other clustering flags reach segment() as one ClusterConfig."""
    import napari_spoco.segmentation as seg
    from napari_spoco.io import save_model
    from napari_spoco.model import ModelConfig, SpocoModel

    seen = []

    def fake(model, image, method=None, config=None, **kwargs):
        seen.append((method, config))
        return np.zeros(image.shape, np.uint16)

    monkeypatch.setattr(seg, "segment", fake)
    model = save_model(SpocoModel.new(ModelConfig(ndim=2)), folders / "m.spoco.pt")
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred"), "--method", "hdbscan", "--bandwidth", "0.7"]) == 0
    (method, config), = seen
    assert method is None and (config.method, config.bandwidth) == ("hdbscan", 0.7)
    assert config.shape_split and config.boundary_merge  # on by default
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred2"), "--no-shape-split"]) == 0
    assert seen[-1][1].shape_split is False and seen[-1][1].boundary_merge
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred3"), "--no-boundary-merge"]) == 0
    assert seen[-1][1].boundary_merge is False and seen[-1][1].shape_split
    assert seen[-1][1].calibrated_edge
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred4"), "--no-calibrated-edge"]) == 0
    assert seen[-1][1].calibrated_edge is False and seen[-1][1].boundary_merge
    assert seen[-1][1].fill_holes  # on by default
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred6"), "--no-fill-holes"]) == 0
    assert seen[-1][1].fill_holes is False and seen[-1][1].calibrated_edge and seen[-1][1].edge_growth
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred7"), "--no-edge-growth"]) == 0
    assert seen[-1][1].edge_growth is False and seen[-1][1].fill_holes
    assert seen[-1][1].layout == "auto"  # the model's measured layout, else the foreground rule
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred5"), "--layout", "tiled"]) == 0
    assert seen[-1][1].layout == "tiled"


def test_installed_entry_point_runs_and_debug_shows_tracebacks(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "napari-spoco")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "demo" in out.stdout
    bad = subprocess.run([exe, "evaluate", "--pred", str(tmp_path / "x"), "--gt", str(tmp_path / "y"), "--debug"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" in bad.stderr


def test_demo_runs_the_whole_loop_on_the_shipped_sample(tmp_path, capsys):
    # The README's first command, shortened to a few steps: shipped model, sample, TIFFs, PNGs.
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "shipped 2D model" in printed.err
    assert "nuclei_heldout" in printed.out and "Trained 3 steps" in printed.out
    # train's defaults: 8 painted nuclei are few, so patches are zoomed, and the demo says so
    assert "Patches were zoomed by up to 1.5x, as only 8 objects are painted" in printed.err
    # the demo trains with train's defaults, so it names bfloat16 as train does (iff native)
    import torch

    from napari_spoco.io import load_model
    from napari_spoco.precision import native_bfloat16

    assert load_model(out / "model.spoco.pt").history["scale_jitter"] == 1.5
    native = load_model(out / "model.spoco.pt").history["precision"] == "bfloat16"
    assert native == native_bfloat16(torch.device("cpu"))
    assert ("The network trains in bfloat16 (the hardware has it natively" in printed.err) == native
    for name in ("model.spoco.pt", "nuclei_train_pred.tif", "nuclei_heldout_pred.tif",
                 "nuclei_train_overlay.png", "nuclei_heldout_overlay.png"):
        assert (out / name).is_file(), name
    pred = tifffile.imread(out / "nuclei_heldout_pred.tif")
    assert pred.shape == (256, 256) and pred.dtype == np.uint16 and pred.max() >= 10
    # and takes the --precision that the note names
    assert main(["demo", "--out", str(tmp_path / "fp32"), "--steps", "1", "--device", "cpu",
                 "--precision", "float32"]) == 0
    assert load_model(tmp_path / "fp32" / "model.spoco.pt").history["precision"] == "float32"
    assert "trains in bfloat16" not in capsys.readouterr().err


def test_training_progress_in_a_log_file_is_a_line_every_few_seconds_counting_steps():
    import io

    from napari_spoco.cli import _Progress

    log = io.StringIO()  # not a terminal
    bar = _Progress(100, None, "train", every=10.0, stream=log)
    for step, elapsed in ((1, 0.5), (2, 5.0), (3, 10.6), (4, 12.0), (5, 15.0)):
        bar.update(step, elapsed, loss=0.5, rate=2.0)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [ln.split(",")[0] for ln in lines] == ["train: step 1/100", "train: step 3/100", "train: step 5/100"]
    assert "2.0 steps/s" in lines[0] and "loss 0.500" in lines[0]
    timed = _Progress(0, 5, "train", stream=io.StringIO())  # --minutes only: steps counted, the limit shown
    timed.update(7, 30.0, loss=1.0, rate=3.0)
    assert "step 7," in timed.text and "0.5 min of 5 min" in timed.text


def test_cli_training_log_counts_steps(folders, tmp_path, capsys):
    from napari_spoco.cli import main

    code = main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(tmp_path / "m.spoco.pt"), "--steps", "2", "--init", "none", "--device", "cpu",
                 "--patch-size", "32", "32", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "train: step 1/2" in err and "train: step 2/2" in err
    assert "\r" not in err and not re.search(r"\ds/s", err), err


def test_network_choice_builds_the_asked_network_and_refuses_a_mismatched_file(folders, capsys):
    from napari_spoco.io import load_model
    from napari_spoco.model import network_name

    base = ["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"), "--steps", "1",
            "--device", "cpu", "--patch-size", "64", "64", "--batch-size", "1"]
    large = folders / "large.spoco.pt"
    assert main(base + ["--out", str(large), "--network", "large"]) == 0
    assert "training a new large network" in capsys.readouterr().err
    assert network_name(load_model(large).config) == "large"
    auto = folders / "auto.spoco.pt"  # auto on a CPU: the shipped (medium) 2D model is fine-tuned
    assert main(base + ["--out", str(auto)]) == 0
    assert network_name(load_model(auto).config) == "medium" and load_model(auto).history["steps"] > 1000
    small = folders / "small.spoco.pt"  # another preset than the shipped model's: a new network
    assert main(base + ["--out", str(small), "--network", "small"]) == 0
    assert "shipped 2D starting model is a medium network: training a new small network" in capsys.readouterr().err
    assert network_name(load_model(small).config) == "small" and load_model(small).history["steps"] == 1
    assert main(base + ["--out", str(folders / "x.spoco.pt"), "--init", str(large), "--network", "small"]) == 2
    assert "holds a large network, not a small one" in capsys.readouterr().err
    fresh = folders / "fresh.spoco.pt"
    assert main(base + ["--out", str(fresh), "--init", "none"]) == 0
    assert "New small network" in capsys.readouterr().err and load_model(fresh).history["steps"] == 1


def test_predict_suggest_writes_the_most_doubtful_objects_per_image(folders, capsys):
    import csv

    model = folders / "m.spoco.pt"
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(model), "--steps", "2", "--device", "cpu"]) == 0
    out = folders / "pred"
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"), "--out", str(out),
                 "--device", "cpu", "--suggest", "2"]) == 0
    rows = list(csv.DictReader((out / "suggestions.csv").open()))
    labels = tifffile.imread(out / "cells.tif")
    assert 1 <= len(rows) <= 2 and all(r["image"] == "cells.tif" for r in rows)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:  # each row names a real object, its centroid inside the image
        assert (labels == int(r["id"])).any() and 0 <= float(r["y"]) < 64 and 0 <= float(r["x"]) < 64
    assert f"{len(rows)} objects in 1 of 1 segmented image(s), up to 2 per image" in capsys.readouterr().err
    before = (out / "suggestions.csv").read_text()  # a second run does not replace it unasked
    again = ["predict", "--model", str(model), "--images", str(folders / "images"), "--out", str(out),
             "--device", "cpu", "--suggest", "2"]
    assert main(again) == 2 and "exist already" in capsys.readouterr().err
    (out / "cells.tif").rename(folders / "kept.tif")
    assert main(again) == 2  # the labels are gone, the suggestions are not: still refused
    assert "suggestions.csv exists already; pass --overwrite to replace it, --skip-existing" in capsys.readouterr().err
    (folders / "kept.tif").rename(out / "cells.tif")
    assert main(again + ["--skip-existing"]) == 0  # nothing new to segment: the file stays as it is
    assert "no image was segmented whole, so none are added to" in capsys.readouterr().err
    assert (out / "suggestions.csv").read_text() == before
    # a batch continued with --skip-existing adds the new images' rows and keeps the earlier ones
    tifffile.imwrite(folders / "images" / "more.tif", tifffile.imread(folders / "images" / "cells.tif")[::-1].copy())
    assert main(again + ["--skip-existing"]) == 0
    assert "Suggestions added to" in capsys.readouterr().err
    after = list(csv.DictReader((out / "suggestions.csv").open()))
    assert after[:len(rows)] == rows and {r["image"] for r in after[len(rows):]} == {"more.tif"}
    # an image segmented again (its labels deleted) has its rows replaced, not doubled
    (out / "cells.tif").unlink()
    assert main(again + ["--skip-existing"]) == 0
    capsys.readouterr()
    final = list(csv.DictReader((out / "suggestions.csv").open()))
    assert [r for r in final if r["image"] == "more.tif"] == after[len(rows):]
    assert [r for r in final if r["image"] == "cells.tif"] == rows  # the same model, the same image


def test_files_named_alike_but_for_a_tag_are_paired(folders, capsys):
    """Labs name an image and its labels plant001_rgb.png / plant001_label.png (CVPPP) or
    img_masks.tif (Cellpose); such pairs were refused ("No image has labels with the same file
    name stem"). Pairing by the names without the tag, said; an exact name still wins."""
    for sub, tag in (("images", "rgb"), ("labels", "label"), ("gt", "masks")):
        (folders / sub / "cells.tif").rename(folders / sub / f"cells_{tag}.tif")
    (folders / "labels" / "cells_fg.tif").write_bytes((folders / "labels" / "cells_label.tif").read_bytes())
    model = folders / "model.pt"
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(model), "--steps", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "Paired 1 image(s) with label files named alike but for a tag" in err and "cells_rgb with cells_label" in err
    assert "cells_fg" in err  # not a tag: left unused, and said
    assert main(["predict", "--model", str(model), "--images", str(folders / "images"),
                 "--out", str(folders / "pred"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "cells_masks with cells_rgb" in err and set(json.loads(out)["images"]) == {"cells_masks"}


def test_pairing_by_tags_keeps_exact_names_and_leaves_ambiguous_names_alone():
    from pathlib import Path

    from napari_spoco.io import pair_by_tags

    images = {s: Path(f"{s}.tif") for s in ("a", "a_rgb", "b_img", "b_raw", "c_image")}
    labels = {s: Path(f"{s}.tif") for s in ("a", "a_label", "b_labels", "c_cp_masks", "d_gt")}
    out, moved = pair_by_tags(images, labels)
    assert out["a"] == Path("a.tif")  # exact names first
    assert out["a_rgb"] == Path("a_label.tif") and out["c_image"] == Path("c_cp_masks.tif")
    assert "b_img" not in out and "b_raw" not in out and out["b_labels"] == Path("b_labels.tif")  # two images 'b'
    assert moved == [("a_rgb", "a_label"), ("c_image", "c_cp_masks")] and out["d_gt"] == Path("d_gt.tif")
    # a label named after the image's whole name and a tag (the image's own name has a tag too)
    images = {s: Path(f"{s}.png") for s in ("p1_rgb", "p2_rgb", "p3_rgb")}
    labels = {s: Path(f"{s}.png") for s in ("p1_rgb_label", "p2_label", "p3_rgb_label", "p3_label")}
    out, moved = pair_by_tags(images, labels)
    assert out["p1_rgb"] == Path("p1_rgb_label.png") and out["p2_rgb"] == Path("p2_label.png")
    assert out["p3_rgb"] == Path("p3_rgb_label.png") and out["p3_label"] == Path("p3_label.png")  # whole name first
    assert moved == [("p1_rgb", "p1_rgb_label"), ("p2_rgb", "p2_label"), ("p3_rgb", "p3_rgb_label")]
    # evaluate passes the ground truth as the images: predictions named after the image
    out, moved = pair_by_tags({"p1_rgb_label": Path("t.png")}, {"p1_rgb": Path("p.tif")})
    assert out == {"p1_rgb_label": Path("p.tif")} and moved == [("p1_rgb_label", "p1_rgb")]


def test_images_and_labels_in_one_folder_are_told_apart_by_label_tags(folders, capsys):
    """CVPPP keeps plant001_rgb.png, plant001_label.png and plant001_fg.png in one folder, Cellpose
    x.tif beside x_masks.tif: with --images and --labels the same folder this was refused as
    "point at the same files"."""
    both = folders / "both"
    both.mkdir()
    (folders / "images" / "cells.tif").rename(both / "cells_rgb.tif")
    (folders / "labels" / "cells.tif").rename(both / "cells_label.tif")
    (both / "cells_fg.tif").write_bytes((both / "cells_label.tif").read_bytes())
    assert main(["train", "--images", str(both), "--labels", str(both), "--out", str(folders / "m.pt"),
                 "--steps", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "1 file(s) whose names end in a label tag" in err and "cells_rgb with cells_label" in err
    assert "Training on 1 image(s): cells_rgb" in err
    # a folder on one side and one of its files on the other: the file is not its own partner
    assert main(["train", "--images", str(both), "--labels", str(both / "cells_label.tif"), "--out",
                 str(folders / "m1.pt"), "--steps", "1", "--device", "cpu"]) == 0
    assert "cells_rgb with cells_label" in capsys.readouterr().err
    (both / "cells_label.tif").unlink()
    (both / "cells_fg.tif").unlink()
    assert main(["train", "--images", str(both), "--labels", str(both), "--out", str(folders / "m2.pt"),
                 "--steps", "1", "--device", "cpu"]) == 2
    assert "no file name there ends in a label tag" in capsys.readouterr().err


def test_evaluate_on_one_folder_tells_truth_from_predictions_by_tags(folders, capsys):
    """--pred and --gt the same folder scored every file against itself: a perfect 1.000 for an
    empty prediction."""
    one = folders / "one"
    one.mkdir()
    (folders / "gt" / "cells.tif").rename(one / "cells_gt.tif")
    tifffile.imwrite(one / "cells_pred.tif", np.zeros((64, 64), np.uint16))
    assert main(["evaluate", "--pred", str(one), "--gt", str(one), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["images"]) == {"cells_gt"} and out["mean"]["AP50"] == 0.0
    (one / "cells_gt.tif").rename(one / "cells_other.tif")  # no tag tells them apart: asked literally, and said
    assert main(["evaluate", "--pred", str(one), "--gt", str(one)]) == 0
    assert "each file is scored against itself" in capsys.readouterr().err


def test_evaluate_pairs_predictions_named_after_the_image_with_truth_named_after_it_and_a_tag(tmp_path, capsys):
    """predict names its output after the image (plant001_rgb); CVPPP's truth is plant001_rgb_label."""
    truth = np.zeros((32, 32), np.uint16)
    truth[4:12, 4:12], truth[20:28, 20:28] = 1, 2
    for sub, stem in (("pred", "plant001_rgb"), ("gt", "plant001_rgb_label")):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / f"{stem}.tif", truth)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"]["AP50"] == 1.0


def test_names_alike_but_for_their_tags_are_named_when_nothing_pairs(tmp_path, capsys):
    for sub, stems in (("img", ("a_rgb", "a_img")), ("lab", ("a_label",))):
        (tmp_path / sub).mkdir()
        for stem in stems:
            tifffile.imwrite(tmp_path / sub / f"{stem}.tif", np.ones((32, 32), np.uint16))
    assert main(["train", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                 "--out", str(tmp_path / "m.pt"), "--steps", "1", "--device", "cpu"]) == 2
    assert "a_img and a_rgb are alike but for their tags" in capsys.readouterr().err
