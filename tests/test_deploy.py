"""Deploy paths: each verified against fp32 eager on real images before it is timed; the fastest choice never
takes a failed path; the timing worker speaks JSON; ONNX Runtime does not spin. (Speed is never asserted.)"""
import json
import os
import subprocess
import sys

import pytest
import torch

import repzoo
from repzoo import deploy
from repzoo.errors import RepZooError

from conftest import REPO_ROOT

pytest.importorskip("sklearn")
SIZE = 32  # small images: the figures here are agreement, not speed


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from repzoo.train.data import write_digits_folder

    root = tmp_path_factory.mktemp("digits")
    write_digits_folder(root, size=SIZE)
    return root


@pytest.fixture(scope="module")
def a0(digits):
    """RepVGG-A0 with BN statistics of the digits and a probe head fitted to them (10 classes), deploy form."""
    torch.manual_seed(0)
    model = repzoo.create_model("RepVGG-A0")
    cfg = model.pretrained_cfg
    x, y = deploy.digits_images(SIZE, cfg["mean"], cfg["std"], digits, "train", limit=96)
    deploy.data_statistics(model, x)
    return deploy.fit_probe(repzoo.reparameterize(model).eval(), x, y)


@pytest.fixture(scope="module")
def val(digits, a0):
    cfg = a0.pretrained_cfg
    images, labels = deploy.digits_images(SIZE, cfg["mean"], cfg["std"], digits, "val", limit=48)
    return images, labels


def test_digits_images_are_the_folder_resized_and_normalised(digits):
    x, y = deploy.digits_images(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), digits, "val", limit=40)
    assert x.shape == (40, 3, 48, 48) and y.shape == (40,) and set(y.tolist()) == set(range(10))
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (v - 0.5) / 0.25 with v in [0, 1]
    with pytest.raises(RepZooError, match="No images"):
        deploy.digits_images(48, (0.5,) * 3, (0.25,) * 3, digits, "test")


def test_the_probe_gives_real_margins(a0, val):
    """Not a tied random head: the fitted model tells the digits apart (so that agreement means something)."""
    images, labels = val
    with torch.no_grad():
        pred = a0(images).argmax(1)
    assert len(set(pred.tolist())) >= 5 and (pred == labels).double().mean() > 0.2


_HEAVY = pytest.mark.heavy  # an ONNX export (or OpenVINO's conversion) each: test_export covers them by default


@pytest.mark.parametrize("runtime", ["eager", "channels_last", "bf16", "int8",
                                     pytest.param("onnxruntime", marks=_HEAVY),
                                     pytest.param("onnxruntime-int8", marks=_HEAVY),
                                     pytest.param("openvino", marks=_HEAVY),
                                     pytest.param("compile", marks=_HEAVY),  # inductor compiles C++
                                     pytest.param("compile-bf16", marks=_HEAVY)])
def test_each_path_is_verified_against_fp32_eager(a0, val, runtime, tmp_path):
    if runtime.startswith("onnx"):
        pytest.importorskip("onnxruntime")
    if runtime == "openvino":
        pytest.importorskip("openvino")
    images, _ = val
    with torch.no_grad():
        reference = a0(images)
    if deploy.KIND[runtime] == "bf16" and not deploy.bf16_support("cpu")[0]:
        with pytest.raises(RepZooError, match="No bf16 path here: the CPU has no bf16 units"):
            deploy.build_path(runtime, a0, example=images[:16])
        return
    fn = deploy.build_path(runtime, a0, example=images[:16], calibration=images[:32], workdir=tmp_path)
    v = deploy.verify(fn, reference, images, deploy.KIND[runtime], 16)
    assert v["images"] == 48 and 0.0 <= v["top1_agreement"] <= 1.0
    if deploy.KIND[runtime] == "fp32":  # the same arithmetic: passes, at fp32 rounding
        assert v["passed"] and v["max_rel_error"] < 1e-4 and v["top1_agreement"] == 1.0
    else:  # reduced precision: a drift, measured and judged by its kind's threshold
        assert 0 < v["max_rel_error"] < 1.0
        assert v["passed"] == (v["top1_agreement"] >= deploy.MIN_AGREEMENT[deploy.KIND[runtime]])


def test_verification_fails_a_wrong_path(a0, val):
    images, _ = val
    with torch.no_grad():
        reference = a0(images)
    shuffled = deploy.verify(lambda x: a0(x.flip(0)).flip(0) * 1.01, reference, images)
    assert not shuffled["passed"] and shuffled["top1_agreement"] == 1.0  # right classes, but 1 % off: fp32 fails
    wrong = deploy.verify(lambda x: a0(x).roll(1, dims=1), reference, images, kind="int8")
    assert not wrong["passed"] and wrong["top1_agreement"] < 0.5
    nan = deploy.verify(lambda x: a0(x) * float("nan"), reference, images, kind="bf16")
    assert not nan["passed"]


def test_the_fastest_choice_never_takes_a_failed_path(a0, val):
    """An injected path that is far faster than every other one but wrong, and one that cannot run: both are
    shown as failed, and the choice is a verified path whose callable computes what eager does."""
    images, _ = val
    fast_but_wrong = lambda x: torch.zeros(len(x), 10)  # noqa: E731
    broken = lambda x: (_ for _ in ()).throw(RuntimeError("no such kernel"))  # noqa: E731
    fn, report = deploy.fastest_deploy(a0, images, runtimes=["eager", "channels_last"], batch_size=16, rounds=1,
                                       repeats=1, paths={"fast-but-wrong": fast_but_wrong, "broken": broken})
    rows = {r["runtime"]: r for r in report.rows}
    assert not rows["fast-but-wrong"]["verification"]["passed"] and "images_per_s" not in rows["fast-but-wrong"]
    assert "no such kernel" in rows["broken"]["error"] and "verification" not in rows["broken"]
    assert report.best in ("eager", "channels_last") and rows[report.best]["verification"]["passed"]
    assert rows["eager"]["vs_eager"] == pytest.approx(1.0)
    with torch.no_grad():
        assert torch.allclose(fn(images[:16]), a0(images[:16]), rtol=1e-4, atol=1e-5)
    text = str(report)
    assert "FAILED" in text and f"fastest verified path at batch 16: {report.best}" in text
    with pytest.raises(RepZooError, match="No deploy path passed"):
        deploy.fastest_deploy(a0, images, runtimes=["eager"], rounds=1, repeats=1,
                              paths={"eager": fast_but_wrong})
    with pytest.raises(RepZooError, match="at least batch_size=16"):
        deploy.fastest_deploy(a0, images[:8])


def test_unknown_paths_and_missing_bf16_units_are_refused(a0, val, monkeypatch):
    images, _ = val
    with pytest.raises(RepZooError, match="Unknown deploy path 'tensorrt'"):
        deploy.build_path("tensorrt", a0, example=images[:2])
    with pytest.raises(RepZooError, match="Unknown deploy path"):
        deploy.bench_runtimes(["RepVGG-A0"], ["eager", "tflite"])
    with pytest.raises(RepZooError, match="needs calibration images"):
        deploy.build_path("int8", a0, example=images[:2])
    monkeypatch.setattr(deploy, "machine", lambda device="cpu": dict(flags=["avx2", "avx512f", "avx512_vnni"]))
    ok, why = deploy.bf16_support("cpu")
    assert not ok and "no bf16 units" in why
    for runtime in ("bf16", "compile-bf16"):
        with pytest.raises(RepZooError, match="No bf16 path here"):
            deploy.build_path(runtime, a0, example=images[:2])
    monkeypatch.setattr(deploy, "machine", lambda device="cpu": dict(flags=["avx2", "amx_bf16"]))
    assert deploy.bf16_support("cpu") == (True, "the CPU has amx_bf16")


def test_onnxruntime_threads_do_not_spin():
    pytest.importorskip("onnxruntime")
    options = deploy.ort_session_options(threads=2)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_the_timing_worker_speaks_json(a0, val, tmp_path):
    """`python -m repzoo.deploy <spec>`: one JSON line when ready (its verification), one per timing request."""
    images, _ = val
    with torch.no_grad():
        reference = a0(images)
    torch.save(dict(state=a0.state_dict(), images=images, reference=reference, calibration=images[:16],
                    num_classes=10), tmp_path / "data.pt")
    spec = dict(model="RepVGG-A0", runtime="channels_last", data=str(tmp_path / "data.pt"), workdir=str(tmp_path),
                threads=1, batch_sizes=[1, 4], warmup=1)
    requests = json.dumps(dict(batch=4, repeats=3)) + "\n" + json.dumps(dict(batch=1, repeats=2)) + "\n" + \
        json.dumps(dict(quit=True)) + "\n"
    out = subprocess.run([sys.executable, "-m", "repzoo.deploy", json.dumps(spec)], input=requests, text=True,
                         capture_output=True, cwd=REPO_ROOT, timeout=300, check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    ready = lines[0]["ready"]
    assert ready["runtime"] == "channels_last" and ready["kind"] == "fp32" and ready["build_seconds"] > 0
    assert ready["verification"]["passed"] and ready["verification"]["images"] == 48
    assert len(lines[1]["times"]) == 3 and len(lines[2]["times"]) == 2
    assert all(isinstance(t, float) and t > 0 for t in lines[1]["times"] + lines[2]["times"])


@pytest.mark.heavy  # a second worker process
def test_a_worker_that_cannot_build_its_path_says_why(a0, val, tmp_path):
    images, _ = val
    torch.save(dict(state=a0.state_dict(), images=images, reference=torch.zeros(len(images), 10),
                    calibration=images[:16], num_classes=10), tmp_path / "data.pt")
    spec = dict(model="RepVGG-A0", runtime="int8", data=str(tmp_path / "data.pt"), workdir=str(tmp_path),
                threads=1, batch_sizes=[2], warmup=1, device="meta")
    out = subprocess.run([sys.executable, "-m", "repzoo.deploy", json.dumps(spec)], input="", text=True,
                         capture_output=True, cwd=REPO_ROOT, timeout=300)
    ready = json.loads(out.stdout.splitlines()[-1])["ready"]
    assert "runs on the CPU" in ready["error"] and "verification" not in ready


def test_spread_and_summary():
    assert deploy.spread([1.0, 1.05, 1.2]) == pytest.approx(0.2) and deploy.spread([3.0]) == 0.0
    s = deploy._summary({4: [[0.1, 0.2, 0.3], [0.4, 0.4, 0.4]]})["4"]
    assert s["images_per_s"] == pytest.approx(4 / 0.35) and s["spread"] == pytest.approx(1.0)
    assert s["round_images_per_s"] == pytest.approx([20.0, 10.0])


def _report(rows):
    return dict(machine=dict(cpu="cpu", cores=2, flags=["avx2"]), versions=dict(torch="2"),
                settings=dict(batch_sizes=[1, 16], threads=2, device="cpu", rounds=3, repeats=3, images="digits"),
                bf16=dict(available=False, why="the CPU has no bf16 units"), rows=rows)


def _row(rt, passed, b1, b16, spread=0.01):
    return dict(model="M", runtime=rt, verification=dict(passed=passed, top1_agreement=1.0 if passed else 0.5,
                                                         max_rel_error=1e-6),
                batches={"1": dict(images_per_s=b1, spread=spread, vs_eager=b1 / 10),
                         "16": dict(images_per_s=b16, spread=spread, vs_eager=b16 / 20)})


def test_fastest_from_a_report_skips_failed_paths_and_the_table_flags_unsteady_figures():
    report = _report([_row("eager", True, 10, 20), _row("openvino", True, 15, 19), _row("int8", False, 99, 99),
                      _row("bf16", True, 12, 60, spread=0.3)])
    assert deploy.fastest_from(report) == {"M": {"1": "openvino", "16": "bf16"}}
    table = deploy.markdown(report)
    assert table.startswith("Measured on cpu (2 cores; flags: avx2)")
    assert "\nM:\n" in table and "| int8 | no | 50.0% | 1.0e-06 | 99.0 (9.90x) | 99.0 (4.95x) | 1.0% |" in table
    assert "30.0% (unsteady)" in table
    assert max(line.count("|") - 1 for line in table.splitlines() if line.startswith("|")) <= 7  # narrow
    assert "Fastest verified path, M: batch 1: openvino, batch 16: bf16" in table
    assert "No bf16 path: the CPU has no bf16 units." in table
    again = _report([_row("eager", True, 11, 20)])
    assert deploy.compare(report, again) == [("M", "eager", "1", pytest.approx(1.1)), ("M", "eager", "16", 1.0)]


@pytest.mark.heavy  # two worker processes and a model prepared from the digits
def test_the_bench_command_runs_each_path_in_its_own_process(digits, tmp_path, capsys):
    from repzoo.cli import main

    out = tmp_path / "deploy"
    assert main(["bench", "--models", "RepVGG-A0", "--runtimes", "eager,onnxruntime,bf16", "--image-size", "32",
                 "--batch-sizes", "1,4", "--rounds", "2", "--repeats", "1", "--images", str(digits), "--quiet",
                 "--fastest", "--json", f"{out}.json", "--markdown", f"{out}.md"]) == 0
    report = json.loads((tmp_path / "deploy.json").read_text())
    rows = {r["runtime"]: r for r in report["rows"]}
    assert rows["eager"]["verification"]["passed"] and rows["onnxruntime"]["verification"]["passed"]
    for rt in ("eager", "onnxruntime"):
        assert set(rows[rt]["batches"]) == {"1", "4"} and len(rows[rt]["batches"]["4"]["round_images_per_s"]) == 2
    assert rows["eager"]["batches"]["1"]["vs_eager"] == pytest.approx(1.0)
    assert report["machine"]["flags"] is not None and report["versions"]["onnxruntime"]
    assert set(report["fastest"]["RepVGG-A0"]) == {"1", "4"}
    printed = capsys.readouterr().out
    assert "fastest verified path for RepVGG-A0 at batch 4:" in printed
    assert (tmp_path / "deploy.md").read_text().startswith("Measured on ")


@pytest.mark.parametrize("stem", ["deploy_a0", "deploy_a0_keepmem", "deploy_b1", "repvgg_vs_resnet_cpu"])
def test_the_benchmark_page_shows_the_committed_reports(stem):
    """docs/benchmarks.md's block of each deploy report is that report's markdown (benchmarks/deploy_docs.py
    writes it from the JSON) and names the machine; the command that wrote the JSON is on the page."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from deploy_docs import table
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    report = json.loads((REPO_ROOT / "benchmarks" / "results" / f"{stem}.json").read_text())
    page = (REPO_ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    block = page.split(f"<!-- {stem}:start -->\n")[1].split(f"\n<!-- {stem}:end -->")[0]
    assert block == table(report)
    assert block.startswith(f"Measured on {report['machine']['cpu']} ({report['machine']['cores']} cores; flags: ")
    assert f"benchmarks/results/{stem}.json" in page.split(f"<!-- {stem}:start -->")[0]


def test_the_repvgg_vs_resnet_table_carries_the_papers_figures():
    """The README's speed column and claims as the script states them (DingXiaoH/RepVGG @ eae7c52, README.md:
    A2 1322, B1g4 868 examples/s; 83 % faster than ResNet-50, 101 % faster than ResNet-101)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import bench_repvgg_vs_resnet as vs
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    assert vs.PAPER_SPEED["RepVGG-A0"] == 3256 and vs.PAPER_SPEED["RepVGG-B1"] == 685
    assert vs.PAPER_CLAIMS == [("RepVGG-A2", "resnet50", 1.83), ("RepVGG-B1g4", "resnet101", 2.01)]
    rows = {n: dict(images_per_s=v, spread=0.0, top1=None) for n, v in
            dict(resnet50=10.0, resnet101=5.0, **{"RepVGG-A2": 19.0, "RepVGG-B1g4": 11.0}).items()}
    report = dict(machine=dict(cpu="cpu", cores=2, flags=[], torch="2"), rows=rows,
                  settings=dict(device="cpu", batch_size=8, image_size=224, rounds=3, repeats=3, threads=2))
    text = vs.markdown(report)
    assert "| RepVGG-A2 vs ResNet-50 | 1.83x | 1.90x |" in text and "| RepVGG-B1g4 vs ResNet-101 | 2.01x | 2.20x |" in text
    assert "| ResNet-50 | - | 10.0 | 1.00x | 722* | 1.00x* |" in text
    assert "| RepVGG-A2 | - | 19.0 | 1.90x | 1322 | 1.83x |" in text


def test_the_report_names_the_allocator_settings(monkeypatch):
    for key in [k for k in os.environ if k.startswith("MALLOC_") or k == "LD_PRELOAD"]:
        monkeypatch.delenv(key)
    assert deploy.allocator_settings() == "glibc defaults"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4294967296")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert deploy.allocator_settings() == "MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=4294967296"
