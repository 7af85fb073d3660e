"""Task registry: names, aliases, folders, class counts and groups."""

from __future__ import annotations

import pytest

from gps.data import TaskSpec, get_task, list_tasks

VTAB_CLASSES = {
    "cifar100": 100,
    "caltech101": 102,
    "dtd": 47,
    "flowers102": 102,
    "pets": 37,
    "svhn": 10,
    "sun397": 397,
    "patch_camelyon": 2,
    "eurosat": 10,
    "resisc45": 45,
    "diabetic_retinopathy": 5,
    "clevr_count": 8,
    "clevr_dist": 6,
    "dmlab": 6,
    "kitti": 4,
    "dsprites_loc": 16,
    "dsprites_ori": 16,
    "smallnorb_azi": 18,
    "smallnorb_ele": 9,
}
FGVC = {
    "cub": ("CUB_200_2011", 200),
    "nabirds": ("nabirds", 555),
    "flowers": ("OxfordFlower", 102),
    "dogs": ("Stanford-dogs", 120),
    "cars": ("Stanford-cars", 196),
}


def test_vtab_tasks_and_classes():
    tasks = list_tasks("vtab")
    assert [t.name for t in tasks] == [f"vtab/{name}" for name in VTAB_CLASSES]
    for task in tasks:
        assert task.num_classes == VTAB_CLASSES[task.name.split("/")[1]], task.name


def test_vtab_groups():
    groups = [t.group for t in list_tasks("vtab")]
    assert groups.count("natural") == 7
    assert groups.count("specialized") == 4
    assert groups.count("structured") == 8
    assert get_task("vtab/eurosat").group == "specialized"


def test_fgvc_tasks_folders_and_classes():
    for name, (folder, classes) in FGVC.items():
        task = get_task(f"fgvc/{name}")
        assert task == TaskSpec(f"fgvc/{name}", "fgvc", folder, classes, None)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("cifar100", "vtab/cifar100"),
        ("cifar", "vtab/cifar100"),
        ("vtab/cifar", "vtab/cifar100"),
        ("oxford_iiit_pet", "vtab/pets"),
        ("oxford_flowers102", "vtab/flowers102"),
        ("flowers102", "vtab/flowers102"),
        ("flowers", "fgvc/flowers"),
        ("cars", "fgvc/cars"),
        ("stanford_cars", "fgvc/cars"),
        ("Stanford-Cars", "fgvc/cars"),
        ("stanford_dogs", "fgvc/dogs"),
        ("oxford_flowers", "fgvc/flowers"),
        ("cub", "fgvc/cub"),
        ("cub_2011", "fgvc/cub"),
        ("CUB_200_2011", "fgvc/cub"),
        ("digits", "demo/digits"),
        ("custom", "custom"),
    ],
)
def test_aliases(alias, expected):
    assert get_task(alias).name == expected


def test_folder_names_of_vtab_distribution():
    assert get_task("vtab/cifar100").folder == "cifar"
    assert get_task("vtab/pets").folder == "oxford_iiit_pet"
    assert get_task("vtab/flowers102").folder == "oxford_flowers102"
    assert get_task("demo/digits") == TaskSpec("demo/digits", "demo", "digits", 10, None)


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError) as caught:
        get_task("stanford_car")
    message = str(caught.value)
    assert "unknown dataset 'stanford_car'" in message
    assert "Did you mean 'fgvc/cars'?" in message
    assert "vtab/smallnorb_ele" in message


def test_list_tasks_default_excludes_custom():
    names = [t.name for t in list_tasks()]
    assert len(names) == 25
    assert "custom" not in names
    assert [t.name for t in list_tasks("custom")] == ["custom"]
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        list_tasks("imagenet")
