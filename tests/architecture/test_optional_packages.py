"""A base install (no extras) trains, and data that needs an extra says which in one line: the
optional packages are imported only where their data or command is used."""

import subprocess
import sys

OPTIONAL = ("pyarrow", "datasets", "webdataset", "tensorboard", "fastapi", "uvicorn", "timm", "transformers",
            "onnx", "onnxruntime", "huggingface_hub")
SCRIPT = f"""
import sys


class NotInstalled:  # pyarrow: scikit-learn looks it up in sys.modules, where None would not do
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyarrow":
            raise ModuleNotFoundError(f"No module named {{name!r}}")


sys.meta_path.insert(0, NotInstalled())
sys.modules.update(dict.fromkeys({OPTIONAL!r}[1:]))  # None there: "not installed" to imports and find_spec
from vitkit.cli import main

assert main(["train", "digits", "--epochs", "1", "--workers", "0", "--out", sys.argv[1]]) == 0
assert main(["train", "hfids:" + sys.argv[1], "--epochs", "1"]) == 2
assert main(["train", "wds:" + sys.argv[1] + "/train-{{000000..000001}}.tar", "--epochs", "1"]) == 2
"""


def test_a_base_install_trains_and_names_the_extra_a_data_spec_needs(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line and "pip install" in line]
    assert any("vitkit[hf]" in e for e in errors) and any("vitkit[wds]" in e for e in errors), done.stderr[-2000:]
