"""Dataset verification: one test per problem, on real image files written to tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gps.data import DatasetError, load_task_data, verify_task
from gps.data.__main__ import main

REPO = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO / "data" / "demo"


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _one_problem(report, *fragments: str) -> str:
    """Return the only problem that contains every fragment; fail if there is none."""
    matches = [p for p in report.problems if all(f in p for f in fragments)]
    assert matches, f"no problem contains {fragments}; problems: {report.problems}"
    return matches[0]


# --- resolving the data dir and the task folder -------------------------------------------


def test_valid_vtab_folder_passes(tmp_path, make_vtab_folder):
    make_vtab_folder(tmp_path, "kitti", 4)
    report = verify_task("vtab/kitti", tmp_path)
    assert report.ok, report.problems
    assert list(report.splits) == ["train800val200", "test"]
    assert report.splits["train800val200"].num_images == 12
    assert report.splits["test"].num_classes_present == 4


def test_task_folder_itself_accepted(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    report = verify_task("kitti", task_dir)
    assert report.ok, report.problems
    assert report.task_dir == task_dir


def test_data_dir_missing(tmp_path):
    missing = tmp_path / "no_such_dir"
    report = verify_task("vtab/cifar100", missing)
    problem = _one_problem(report, "data dir not found", str(missing))
    assert "data/README.md" in problem
    assert "cifar/" in problem


def test_task_folder_missing_under_root(tmp_path, make_vtab_folder):
    make_vtab_folder(tmp_path, "kitti", 4)
    report = verify_task("vtab/cifar100", tmp_path)
    problem = _one_problem(report, "task folder 'cifar'", str(tmp_path))
    assert "kitti" in problem
    assert report.task_dir is None


def test_task_folder_alias_name_accepted(tmp_path, make_vtab_folder):
    make_vtab_folder(tmp_path, "clevr_distance", 6, counts={"train800": 6, "val200": 6, "test": 6})
    report = verify_task("vtab/clevr_dist", tmp_path)
    assert report.ok, report.problems
    assert any("usual name is 'clevr_dist'" in w for w in report.warnings)


def test_vtab_split_file_missing(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    (task_dir / "train800val200.txt").unlink()
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "not found", "train800val200.txt")
    assert "VTAB-1k distribution" in problem
    assert "test.txt" in problem
    assert "data/README.md" in problem


def test_fgvc_split_file_missing(tmp_path, make_fgvc_folder):
    task_dir = make_fgvc_folder(tmp_path, "Stanford-cars", 3, image_subdir="")
    (task_dir / "test.json").unlink()
    report = verify_task("fgvc/cars", tmp_path)
    problem = _one_problem(report, "not found", "test.json")
    assert "VPT" in problem
    assert "data/README.md" in problem


def test_fgvc_folder_for_vtab_name_hints_layout(tmp_path, make_fgvc_folder):
    task_dir = make_fgvc_folder(tmp_path, "flowers_copy", 3, image_subdir="")
    report = verify_task("vtab/flowers102", task_dir)
    _one_problem(report, "train800val200.txt", "FGVC layout")


# --- parsing ---------------------------------------------------------------------------------


def test_malformed_line_reported(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    _rewrite(task_dir / "test.txt", "images/test/00001.jpg 1\n", "images/test/00001.jpg\n")
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "malformed line")
    assert f"{task_dir / 'test.txt'}:2" in problem
    assert "'images/test/00001.jpg'" in problem


def test_label_not_integer(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    _rewrite(task_dir / "test.txt", "images/test/00002.jpg 2\n", "images/test/00002.jpg two\n")
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "'two'", "not an integer")
    assert f"{task_dir / 'test.txt'}:3" in problem


def test_label_out_of_range(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    _rewrite(task_dir / "test.txt", "images/test/00003.jpg 3\n", "images/test/00003.jpg 4\n")
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "label 4", "outside 0..3")
    assert "test.txt:4" in problem


def test_negative_label_out_of_range(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    _rewrite(task_dir / "test.txt", "images/test/00000.jpg 0\n", "images/test/00000.jpg -1\n")
    report = verify_task("vtab/kitti", tmp_path)
    _one_problem(report, "label -1", "outside 0..3")


def test_many_bad_lines_capped(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4, counts={"test": 20})
    text = (task_dir / "test.txt").read_text().replace(".jpg ", ".jpg x")
    (task_dir / "test.txt").write_text(text)
    report = verify_task("vtab/kitti", tmp_path)
    listed = [p for p in report.problems if "is not an integer" in p]
    assert len(listed) == 5
    _one_problem(report, "15 more lines with a non-integer label")


def test_fgvc_invalid_json_names_line(tmp_path, make_fgvc_folder):
    task_dir = make_fgvc_folder(tmp_path, "Stanford-cars", 3, image_subdir="")
    text = (task_dir / "val.json").read_text()
    lines = text.splitlines()
    lines[2] = lines[2].replace(":", "")
    (task_dir / "val.json").write_text("\n".join(lines))
    report = verify_task("fgvc/cars", tmp_path)
    problem = _one_problem(report, f"{task_dir / 'val.json'}:3", "invalid JSON")
    assert lines[2].strip() in problem


def test_fgvc_non_integer_label(tmp_path, make_fgvc_folder):
    task_dir = make_fgvc_folder(tmp_path, "Stanford-cars", 3, image_subdir="")
    data = json.loads((task_dir / "test.json").read_text())
    key = sorted(data)[1]
    data[key] = "2"
    (task_dir / "test.json").write_text(json.dumps(data, indent=1))
    report = verify_task("fgvc/cars", tmp_path)
    problem = _one_problem(report, "label '2'", "not an integer")
    assert key in problem
    assert "test.json:" in problem


def test_fgvc_duplicate_json_key(tmp_path, make_fgvc_folder):
    task_dir = make_fgvc_folder(tmp_path, "Stanford-cars", 3, image_subdir="")
    text = (task_dir / "train.json").read_text()
    first_line = text.splitlines()[1].rstrip(",")
    (task_dir / "train.json").write_text(text.replace("{\n", "{\n" + first_line + ",\n", 1))
    report = verify_task("fgvc/cars", tmp_path)
    problem = _one_problem(report, "duplicate entries", "train.json")
    assert first_line.split(":")[0].strip().strip('"') in problem


# --- labels and classes ----------------------------------------------------------------------


def test_classes_missing_from_all_splits(tmp_path, make_vtab_folder):
    # 3 labels (0, 1, 2) cover only 3 of kitti's 4 classes.
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    for name in ("train800val200", "test", "train800", "val200"):
        path = task_dir / f"{name}.txt"
        path.write_text(path.read_text().replace(" 3\n", " 2\n"))
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "3 of the 4 classes", "vtab/kitti")
    assert "labels 3" in problem


def test_split_missing_classes_only_warns(tmp_path, make_vtab_folder):
    # val200 has 2 of 4 classes; train800 and test have all, so tune only warns.
    make_vtab_folder(tmp_path, "kitti", 4, counts={"val200": 2})
    report = verify_task("vtab/kitti", tmp_path, protocol="tune")
    assert report.ok, report.problems
    assert any("val200 has images of 2 of 4 classes" in w for w in report.warnings)


def test_tune_reads_test_for_coverage(tmp_path, make_vtab_folder):
    # train800 + val200 cover 3 of 4 classes, test covers all: not a problem under tune.
    make_vtab_folder(tmp_path, "kitti", 4, counts={"train800": 3, "val200": 3})
    report = verify_task("vtab/kitti", tmp_path, protocol="tune")
    assert report.ok, report.problems


def test_eval_classes_absent_from_train_warn(tmp_path, make_vtab_folder):
    make_vtab_folder(tmp_path, "kitti", 4, counts={"train800": 3, "val200": 0})
    report = verify_task("vtab/kitti", tmp_path)
    assert report.ok, report.problems
    warning = next(w for w in report.warnings if "no training images" in w)
    assert "labels 3" in warning
    assert "not stratified" in warning


def test_duplicate_entries(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    path = task_dir / "test.txt"
    path.write_text(path.read_text() + "images/test/00002.jpg 2\n")
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "1 duplicate entries", "images/test/00002.jpg")
    assert "test.txt:3" in problem
    assert "test.txt:5" in problem


def test_empty_split(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    (task_dir / "test.txt").write_text("")
    report = verify_task("vtab/kitti", tmp_path)
    _one_problem(report, "split test", "is empty")


def test_train_eval_overlap(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    path = task_dir / "test.txt"
    path.write_text(path.read_text() + "images/train800/00000.jpg 0\n")
    report = verify_task("vtab/kitti", tmp_path)
    _one_problem(report, "listed in both train800val200 and test", "00000.jpg")


def test_num_classes_option_mismatch(tmp_path, make_vtab_folder):
    make_vtab_folder(tmp_path, "kitti", 4)
    report = verify_task("vtab/kitti", tmp_path, num_classes=5)
    _one_problem(report, "--num-classes 5", "vtab/kitti", "4 classes")


# --- images ----------------------------------------------------------------------------------


def test_missing_images_counted(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    for index in range(3):
        (task_dir / f"images/test/{index:05d}.jpg").unlink()
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "3 of 4 listed images not found")
    assert str(task_dir / "images/test/00000.jpg") in problem
    assert "leading folder" not in problem


def test_missing_images_nested_folder_hint(tmp_path, make_fgvc_folder):
    # Stanford Cars copies that nest cars_train/cars_train/ break the JSON paths.
    task_dir = make_fgvc_folder(tmp_path, "Stanford-cars", 2, image_subdir="")
    for split in ("train", "val", "test"):
        path = task_dir / f"{split}.json"
        data = {f"cars_{split}/{Path(k).name}": v for k, v in json.loads(path.read_text()).items()}
        path.write_text(json.dumps(data))
        for key in data:
            source = next(task_dir.glob(f"*/{Path(key).name}"))
            target = task_dir / f"cars_{split}" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
    report = verify_task("fgvc/cars", tmp_path)
    problem = _one_problem(report, "cars_train", "listed images not found")
    assert "adding the leading folder 'cars_train/'" in problem


def test_missing_images_extra_folder_hint(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    path = task_dir / "test.txt"
    path.write_text(path.read_text().replace("images/test/", "extra/images/test/"))
    report = verify_task("vtab/kitti", tmp_path)
    problem = _one_problem(report, "4 of 4 listed images not found")
    assert "removing the leading folder 'extra/'" in problem


def test_undecodable_image_only_with_decode(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    broken = task_dir / "images/test/00001.jpg"
    broken.write_bytes(b"not an image")
    assert verify_task("vtab/kitti", tmp_path).ok
    report = verify_task("vtab/kitti", tmp_path, decode=True)
    problem = _one_problem(report, "cannot decode", str(broken))
    assert "UnidentifiedImageError" in problem


def test_truncated_image_fails_decode(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4, size=64)
    image = task_dir / "images/train800/00002.jpg"
    image.write_bytes(image.read_bytes()[:200])
    report = verify_task("vtab/kitti", tmp_path, decode=True)
    _one_problem(report, "cannot decode", str(image))


# --- the wrong task -------------------------------------------------------------------------


def test_other_tasks_folder_named(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(
        tmp_path, "dtd", 47, counts={"train800": 47, "val200": 0, "test": 47}
    )
    report = verify_task("vtab/cifar100", task_dir)
    problem = _one_problem(report, "task folder of vtab/dtd", "vtab/cifar100")
    assert "'cifar'" in problem


def test_other_tasks_folder_without_split_files(tmp_path, make_fgvc_folder):
    task_dir = make_fgvc_folder(tmp_path, "OxfordFlower", 3, image_subdir="")
    report = verify_task("vtab/flowers102", task_dir)
    _one_problem(report, "task folder of fgvc/flowers", "vtab/flowers102")


def test_class_count_of_other_task(tmp_path, make_vtab_folder):
    # Labels 0..3 match kitti (4 classes), not clevr_count (8 classes).
    make_vtab_folder(tmp_path, "clevr_count", 4)
    report = verify_task("vtab/clevr_count", tmp_path)
    _one_problem(report, "span 4 classes", "vtab/kitti", "vtab/clevr_count")


def test_fgvc_class_count_of_other_task(tmp_path, make_fgvc_folder):
    make_fgvc_folder(
        tmp_path,
        "Stanford-dogs",
        102,
        counts={"train": 102, "val": 0, "test": 0},
        image_subdir="Images",
        size=4,
    )
    report = verify_task("fgvc/dogs", tmp_path)
    _one_problem(report, "span 102 classes", "fgvc/flowers", "fgvc/dogs")


def test_all_problems_reported_together(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    _rewrite(task_dir / "test.txt", "images/test/00001.jpg 1\n", "images/test/00001.jpg\n")
    _rewrite(task_dir / "train800val200.txt", "00000.jpg 0", "00000.jpg 9")
    (task_dir / "images/test/00003.jpg").unlink()
    report = verify_task("vtab/kitti", tmp_path)
    _one_problem(report, "malformed line")
    _one_problem(report, "label 9", "outside 0..3")
    _one_problem(report, "1 of 3 listed images not found")


# --- FGVC specifics -------------------------------------------------------------------------


def test_fgvc_labels_made_contiguous(tmp_path, make_fgvc_folder):
    make_fgvc_folder(
        tmp_path, "CUB_200_2011", 200, counts={"train": 200, "val": 3, "test": 3}, size=4
    )
    data = load_task_data("fgvc/cub", tmp_path)
    assert data.num_classes == 200
    assert data.train.name == "train+val"
    assert len(data.train.samples) == 203
    # The files use ids 1..200; the samples use 0..199.
    assert {label for _, label in data.train.samples} == set(range(200))
    assert sorted(label for _, label in data.eval.samples) == [0, 1, 2]
    assert all(os.path.isabs(path) for path, _ in data.train.samples)


def test_fgvc_paths_relative_to_task_folder(tmp_path, make_fgvc_folder):
    # JSON paths that include the images/ folder are resolved against the task folder.
    task_dir = make_fgvc_folder(
        tmp_path, "my_cub", 200, counts={"train": 200, "val": 3, "test": 3}, size=4
    )
    for split in ("train", "val", "test"):
        path = task_dir / f"{split}.json"
        data = {f"images/{k}": v for k, v in json.loads(path.read_text()).items()}
        path.write_text(json.dumps(data))
    report = verify_task("fgvc/cub", task_dir)
    assert report.ok, report.problems
    assert any("relative to" in w for w in report.warnings)


# --- custom data -----------------------------------------------------------------------------


def test_custom_tree_infers_classes(tmp_path, make_class_tree):
    make_class_tree(tmp_path, ["cat", "dog", "emu"], counts={"train": 2, "val": 1, "test": 1})
    data = load_task_data("custom", tmp_path)
    assert data.num_classes == 3
    assert data.task.num_classes == 3
    assert data.class_names == ["cat", "dog", "emu"]
    assert data.train.name == "train+val"
    assert len(data.train.samples) == 9
    assert sorted(label for _, label in data.eval.samples) == [0, 1, 2]


def test_custom_tree_num_classes_mismatch(tmp_path, make_class_tree):
    make_class_tree(tmp_path, 3)
    report = verify_task("custom", tmp_path, num_classes=4)
    _one_problem(report, "found 3 class folders", "--num-classes is 4")


def test_custom_tree_tune_needs_val(tmp_path, make_class_tree):
    make_class_tree(tmp_path, 3)
    report = verify_task("custom", tmp_path, protocol="tune")
    _one_problem(report, str(tmp_path / "val"), "not found")


def test_custom_tree_without_test_hints_tune(tmp_path, make_class_tree):
    make_class_tree(tmp_path, 3, counts={"train": 2, "val": 1, "test": 0})
    report = verify_task("custom", tmp_path)
    _one_problem(report, str(tmp_path / "test"), "use protocol 'tune'")
    assert verify_task("custom", tmp_path, protocol="tune").ok


def test_custom_list_files(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "mine", 3)
    data = load_task_data("custom", task_dir)
    assert data.num_classes == 3
    report = verify_task("custom", task_dir, num_classes=2)
    _one_problem(report, "label 2", "outside 0..1")


def test_custom_empty_folder(tmp_path):
    report = verify_task("custom", tmp_path)
    _one_problem(report, "no custom dataset found", "class-per-folder")


# --- loading ---------------------------------------------------------------------------------


def test_load_task_data_raises_all_problems(tmp_path, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    (task_dir / "test.txt").write_text("")
    (task_dir / "images/train800/00000.jpg").unlink()
    with pytest.raises(DatasetError) as caught:
        load_task_data("vtab/kitti", tmp_path)
    assert len(caught.value.problems) == 2
    for problem in caught.value.problems:
        assert problem in str(caught.value)


def test_load_task_data_protocols(tmp_path, make_vtab_folder):
    make_vtab_folder(tmp_path, "kitti", 4)
    final = load_task_data("vtab/kitti", tmp_path)
    tune = load_task_data("vtab/kitti", tmp_path, protocol="tune")
    assert (final.train.name, final.eval.name) == ("train800val200", "test")
    assert (tune.train.name, tune.eval.name) == ("train800", "val200")
    assert len(final.train.samples) == len(tune.train.samples) + len(tune.eval.samples)
    assert final.num_classes == 4


def test_unknown_protocol_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown protocol 'test'"):
        verify_task("demo/digits", DEMO_ROOT, protocol="test")


# --- bundled demo and the command line ------------------------------------------------------


def test_demo_counts():
    final = load_task_data("demo/digits", DEMO_ROOT)
    tune = load_task_data("demo/digits", DEMO_ROOT / "digits", protocol="tune")
    assert (len(final.train.samples), len(final.eval.samples)) == (600, 300)
    assert (len(tune.train.samples), len(tune.eval.samples)) == (500, 100)
    assert final.num_classes == 10


def test_cli_demo_passes(capsys):
    code = main(["verify", "--dataset", "demo/digits", "--data-dir", str(DEMO_ROOT)])
    output = capsys.readouterr().out
    assert code == 0
    assert "train split train800val200: 600 images, 10 classes present" in output
    assert "eval split test: 300 images" in output
    assert "OK: no problems found" in output


def test_cli_problems_exit_1(tmp_path, capsys, make_vtab_folder):
    task_dir = make_vtab_folder(tmp_path, "kitti", 4)
    (task_dir / "test.txt").unlink()
    code = main(["verify", "--dataset", "vtab/kitti", "--data-dir", str(tmp_path)])
    output = capsys.readouterr().out
    assert code == 1
    assert "test.txt" in output
    assert "FAILED: 1 problem(s) found" in output


def test_cli_unknown_dataset_exit_2(tmp_path, capsys):
    code = main(["verify", "--dataset", "vtab/cifar10", "--data-dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 2
    assert "unknown dataset 'vtab/cifar10'" in error
    assert "vtab/cifar100" in error
    assert "Traceback" not in error


def test_cli_module_entry_point(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gps.data",
            "verify",
            "--dataset",
            "demo/digits",
            "--data-dir",
            str(tmp_path / "missing"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "data dir not found" in result.stdout
    assert "Traceback" not in result.stderr
