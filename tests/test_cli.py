import json
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fxcons.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_annotate_json_resnet18_verify():
    p = run("annotate", "torchvision:resnet18", "--verify", "--json", "--example-shape", "2,3,64,64", "--probes", "1")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["model"] == "torchvision:resnet18" and d["total_laws"] == 7680
    kinds = {f["kind"] for f in d["families"]}
    assert kinds == {"scale", "rescale"}
    assert all(set(f) >= {"name", "kind", "exactness", "count", "params"} for f in d["families"])
    assert d["verify"]["checked"] == 7680 and d["verify"]["failed"] == 0 and d["verify"]["max_ratio"] < 1e-8


@pytest.mark.parametrize("args,needle", [
    (["annotate", "nothing"], "has no source"),
    (["annotate", "torchvision:not_a_model"], "no model named"),
    (["annotate", "tests/data/factories.py:missing"], "no factory 'missing'"),
    (["annotate", "tests/data/factories.py:needs_shape"], "--example-shape"),
    (["annotate", "tests/data/factories.py:frozen"], "no trainable parameters"),
    (["annotate", "torchvision:resnet18", "--example-shape", "a,b"], "comma-separated"),
    (["annotate", "torchvision:resnet18", "--example-shape", "2,5,32,32"], "shape propagation failed at node"),
    (["annotate", "hf:gpt2?n_layer=abc"], "expected int"),
    (["annotate", "hf:gpt2?n_embd=15&n_head=4"], "divisible"),
])
def test_bad_input_is_one_line_and_nonzero(args, needle):
    p = run(*args)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_file_factory_and_explain():
    p = run("annotate", "tests/data/factories.py:mlp", "--explain")
    assert p.returncode == 0, p.stderr
    assert "GELU is not positively homogeneous" in p.stdout
    assert "rescale" in p.stdout


def test_help_explains_specs():
    p = run("annotate", "--help")
    assert p.returncode == 0 and "torchvision:NAME" in p.stdout and "--example-shape" in p.stdout
