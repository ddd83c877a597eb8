import importlib
import json

import numpy as np

from stages.__main__ import main as stages_main
from stages.ensemble.merge import load_softmax
from stages.imageio import read_image
from tests.postprocess.synthetic import write_prediction

# the package also has a console-script function named ``ensemble``; import the module itself
compat_ensemble = importlib.import_module("nnkube.nnunet_compat.ensemble")


def _folders(tmp_path):
    rng = np.random.RandomState(0)
    for name in ("A", "B"):
        for case in ("c1", "c2"):
            p = rng.uniform(0.01, 1, (3, 4, 5, 6)).astype(np.float32)
            write_prediction(tmp_path / name, case, p / p.sum(0))
    return [str(tmp_path / "A"), str(tmp_path / "B")]


def test_stage_cli(tmp_path):
    a, b = _folders(tmp_path)
    rc = stages_main(["ensemble", "--folder", a, "--folder", b, "--output", str(tmp_path / "out"), "--npz",
                      "--num-processes", "1", "--result-json", str(tmp_path / "r.json")])
    assert rc == 0
    assert json.loads((tmp_path / "r.json").read_text())["case_ids"] == ["c1", "c2"]
    mean = (load_softmax(tmp_path / "A" / "c2.npz") + load_softmax(tmp_path / "B" / "c2.npz")) / 2
    seg, _ = read_image(tmp_path / "out" / "c2.nii.gz")
    np.testing.assert_array_equal(seg, np.argmax(mean, 0))


def test_nnunet_ensemble_and_exit_codes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    a, b = _folders(tmp_path)
    assert compat_ensemble.main(["-f", a, b, "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["c1.nii.gz", "c2.nii.gz"]
    (tmp_path / "A" / "c1.npz").unlink()
    assert compat_ensemble.main(["-f", a, b, "-o", str(tmp_path / "out2")]) == 2
    assert "lacks the probabilities of case c1" in capsys.readouterr().err
    assert stages_main(["ensemble", "--folder", a, "--folder", b, "--output", str(tmp_path / "o3"),
                        "--num-processes", "1"]) == 2
