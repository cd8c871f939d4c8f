"""Bad input, as a table, through the real CLI: each case ends with ONE ``Error:`` line naming the key or file and
the fix, a non-zero exit code, no traceback, and the run folder unchanged. Every `jit train` case runs twice: as a
real start and with ``--dry-run`` (which runs every check a real start runs)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from jit_core import durable

from .test_bad_input import invoke, one_line_error

pytest_plugins = ["jit_core.testing"]

EDGECO = "tests.edgeco_plugin"


@pytest.fixture(scope="module")
def cli():
    import jit_core.cli as jit_cli
    jit_cli._add_optional_commands()
    return jit_cli.cli


def _file(name: str, text: str):
    def make(tmp):
        path = tmp / name
        path.write_text(text)
        return ["--config", path]
    return make


def _args(*args):
    return lambda tmp: list(args)


# (id, arguments after `jit train --preset test --run-dir RUN`, fragments of the error line)
TRAIN = [
    ("batch-size-0", _args("optim.batch_size=0"), ["optim.batch_size=0", "must be > 0"]),
    ("batch-size-negative", _args("optim.batch_size=-4"), ["optim.batch_size=-4", "must be > 0"]),
    ("ckpt-every-0", _args("train.ckpt_every=0"), ["train.ckpt_every=0", "must be > 0"]),
    ("log-every-0", _args("train.log_every=0"), ["train.log_every=0", "must be > 0"]),
    ("max-steps-negative", _args("train.max_steps=-5"), ["train.max_steps=-5", "must be >= 0"]),
    ("epochs-negative", _args("train.epochs=-1"), ["train.epochs=-1.0", "must be >= 0"]),
    ("attention", _args("train.attention=weird"), ["train.attention=weird", "must be one of exact, fast"]),
    ("nan-policy", _args("train.nan_policy=maybe"), ["train.nan_policy=maybe", "must be one of stop, skip"]),
    ("precision", _args("train.precision=fp8"), ["train.precision=fp8", "must be one of bf16, fp32"]),
    ("ema-decays", _args("optim.ema_decays=2,3"), ["optim.ema_decays=2.0,3.0", "each value must be > 0 and < 1"]),
    ("betas", _args("optim.betas=1.5,2"), ["optim.betas=1.5,2.0", "each value must be >= 0 and < 1"]),
    ("lr-zero", _args("optim.lr=0"), ["optim.lr=0.0", "must be > 0"]),
    ("schedule", _args("optim.schedule=linear"), ["optim.schedule=linear", "must be one of constant, cosine"]),
    ("sample-method", _args("sample.method=rk4"), ["sample.method=rk4", "must be one of heun, euler"]),
    ("sample-steps-0", _args("sample.steps=0"), ["sample.steps=0", "must be > 0"]),
    ("cfg-interval-order", _args("sample.interval=0.9,0.1"), ["sample.interval=0.9,0.1", "needs lo < hi"]),
    ("label-drop-prob", _args("diffusion.label_drop_prob=1.5"), ["diffusion.label_drop_prob=1.5", "must be >= 0 and <= 1"]),
    ("device-unavailable", _args("train.device=cuda:99"), ["train.device=cuda:99", "use train.device=cpu"]),
    ("device-unknown", _args("train.device=tpu"), ["train.device='tpu' is not a device", "auto, cpu, cuda"]),
    ("data-name", _args("data.name=foo"), ["data.name=foo", "must be one of imagenet, folder, fashion_mnist, digits"]),
    ("data-path-unset", _args("data.name=folder"), ["data.path is not set", "data.path=<root>/<class>/<image>"]),
    ("dataset-smaller-than-batch", _args("optim.batch_size=5000"), ["smaller than one global batch", "lower optim.batch_size"]),
    ("toml-malformed", _file("bad.toml", "[optim]\nblr = 1e-4\nbatch_size = = 3\n"),
     ["bad.toml is not valid TOML", "line 3", "fix that line"]),
    ("json-malformed", _file("bad.json", '{"optim": {"blr": 1e-4,}}'), ["bad.json is not valid JSON", "line 1"]),
    ("config-file-missing", lambda tmp: ["--config", tmp / "nope.toml"], ["nope.toml", "does not exist"]),
    ("plugin-range", _args("--plugin", "vco", "vco.drift_coef=-1"), ["vco.drift_coef=-1.0", "must be >= 0"]),
    ("plugin-choice", _args("--plugin", "vco", "vco.encoder=resnet"),
     ["vco.encoder=resnet", "must be one of dinov2, efficientnet_lite0"]),
    ("plugin-null-branch", _args("--plugin", "vco", "vco.null_branch=zeros"),
     ["vco.null_branch=zeros", "structured, label_drop, input_dropout"]),
    ("plugin-cross-option", _args("--plugin", "vco", "vco.symmetric_mask=true", "vco.null_branch=label_drop"),
     ["vco.symmetric_mask=true needs vco.null_branch=structured"]),
    ("plugin-batch-multiple", _args("--plugin", "vco", "vco.groups_per_step=3"),
     ["vco.groups_per_step=3 does not divide the global batch 16", "vco.class_balanced=false"]),
    ("plugin-stats-missing", _args("--plugin", "vco", "vco.stats=/no/such/stats.safetensors"),
     ["vco.stats='/no/such/stats.safetensors' does not exist", "jit vco calibrate"]),
    ("options-of-a-plugin-not-enabled", _args("vco.drift_coef=1"),
     ["option vco.drift_coef", "'vco' is not an enabled plugin", "--plugin vco"]),
    ("module-plugin-option-typo", _args("--plugin", EDGECO, f"{EDGECO}.wieght=abc"),
     [f"unknown option '{EDGECO}.wieght'", "did you mean 'weight'"]),
    ("module-plugin-option-type", _args("--plugin", EDGECO, f"{EDGECO}.weight=abc"),
     [f"bad value 'abc' for {EDGECO}.weight: expected float"]),
    ("plugin-enabled-twice", _args("--plugin", "vco", "--plugin", "vco_plugin.plugin"),
     ["'vco_plugin.plugin' is the module of the installed plugin 'vco'", "enable it once"]),
    ("two-batch-samplers", _args("--plugin", "vco", "--plugin", EDGECO, f"{EDGECO}.sampler=true",
                                 "vco.encoder=efficientnet_lite0"),
     [f"plugins 'vco' and '{EDGECO}' both answer jit_batch_sampler"]),
    ("run-folder-name-too-long", lambda tmp: ["--run-dir", tmp / ("r" * 300)], ["is 300 bytes long", "shorter --run-dir"]),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["start", "dry-run"])
@pytest.mark.parametrize("case", TRAIN, ids=[c[0] for c in TRAIN])
def test_bad_train_input(cli, tmp_path, case, dry_run):
    _, make, fragments = case
    run = tmp_path / "run"
    extra = [str(a) for a in make(tmp_path)]
    res = invoke(cli, "train", "--preset", "test", "--run-dir", run, *(["--dry-run"] if dry_run else []), *extra)
    one_line_error(res, *fragments)
    assert not run.exists() and not os.path.exists(tmp_path / ("r" * 300))


def test_dry_run_of_a_good_config_prints_it_and_writes_nothing(cli, tmp_path):
    run = tmp_path / "run"
    res = invoke(cli, "train", "--preset", "test", "--run-dir", run, "--dry-run", "--plugin", "vco",
                 "vco.encoder=efficientnet_lite0", "vco.drift_coef=2")
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output[res.output.index("{"):])
    assert cfg["plugin_options"]["vco"]["drift_coef"] == 2.0 and cfg["model_overrides"]["num_classes"] == 10
    assert not run.exists()


# ----------------------------------------------------------------------------------- runs: sample, resume, evaluate
@pytest.fixture(scope="module")
def finished(cli, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    res = invoke(cli, "train", "--preset", "test", "--run-dir", run, "train.max_steps=2", "train.ckpt_every=2",
                 "sample.steps=1")
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture
def run_copy(finished, tmp_path):
    import shutil
    return shutil.copytree(finished, tmp_path / "run")


def _snapshot(path):
    return {str(p.relative_to(path)): (p.stat().st_size, durable.sha256_file(p)) for p in sorted(path.rglob("*"))
            if p.is_file()}


def _rehash(ckpt, name):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": (ckpt / name).stat().st_size, "sha256": durable.sha256_file(ckpt / name)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _no_sha(run):
    ckpt = run / "checkpoints" / "step-00000002"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    del manifest["files"]["ema1.safetensors"]["sha256"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    return ckpt


def _random_trainer(run):
    ckpt = run / "checkpoints" / "step-00000002"
    (ckpt / "trainer.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    _rehash(ckpt, "trainer.pt")
    return ckpt


def _ref_stats(tmp):
    path = tmp / "stats.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048))
    return path


def _corrupt_inception(tmp):
    path = tmp / "pt_inception.pth"
    path.write_bytes(b"not weights" * 100)
    return path


# (id, damage the run copy -> None, command after `jit`, fragments); {run}, {tmp} are filled in
RUNS = [
    ("sample-label-out-of-range", None, ["sample", "{run}", "--labels", "99"],
     ["--labels 99: label 99 is not a class of this run", "0 .. 9"]),
    ("sample-label-negative", None, ["sample", "{run}", "--labels", "3,-1"], ["label -1 is not a class"]),
    ("sample-label-not-an-integer", None, ["sample", "{run}", "--labels", "a,b"],
     ["--labels a,b: 'a' is not an integer class label", "--labels 0,1,2"]),
    ("sample-cfg-negative", None, ["sample", "{run}", "--cfg", "-1"], ["--cfg -1.0", "must be >= 0"]),
    ("sample-device-unavailable", None, ["sample", "{run}", "--device", "cuda:99"], ["device=cuda:99", "cpu"]),
    ("manifest-entry-without-sha256", _no_sha, ["train", "--resume", "{run}"],
     ["manifest.json: the entry of ema1.safetensors has no valid sha256", "restore it"]),
    ("sample-manifest-entry-without-sha256", _no_sha, ["sample", "{run}"],
     ["manifest.json: the entry of ema1.safetensors has no valid sha256"]),
    ("trainer-pt-random-bytes", _random_trainer, ["train", "--resume", "{run}"],
     ["trainer.pt is not a torch checkpoint file", "damaged or replaced"]),
    ("resume-bad-override", None, ["train", "--resume", "{run}", "train.log_every=0"], ["train.log_every=0", "must be > 0"]),
    ("evaluate-inception-corrupt", None,
     ["evaluate", "{run}", "--metrics", "fid", "--ref-stats", "{stats}", "--inception-weights", "{inception}",
      "--num-images", "4"],
     ["FID Inception weights unavailable", "pt_inception.pth is not readable", "--inception-weights PATH"]),
    ("evaluate-inception-missing-offline", None,
     ["evaluate", "{run}", "--metrics", "fid", "--ref-stats", "{stats}", "--num-images", "4"],
     ["FID Inception weights unavailable (offline", "--inception-weights PATH"]),
]


@pytest.mark.parametrize("case", RUNS, ids=[c[0] for c in RUNS])
def test_bad_input_on_a_run(cli, run_copy, tmp_path, monkeypatch, case):
    _, damage, command, fragments = case
    if damage:
        damage(run_copy)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))     # no cached Inception weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = {"run": run_copy, "stats": _ref_stats(tmp_path), "inception": _corrupt_inception(tmp_path)}
    before = _snapshot(run_copy)
    res = invoke(cli, *[c.format(**files) for c in command], env={"TORCH_HOME": str(tmp_path / "torch-home")})
    one_line_error(res, *fragments)
    assert _snapshot(run_copy) == before                          # nothing written, nothing sampled
    assert "pickled objects" not in res.output


def test_the_table_is_large_enough():
    assert len(TRAIN) + len(RUNS) >= 30              # distinct bad inputs (each train case also runs as --dry-run)
    assert torch.cuda.device_count() < 100           # "train.device=cuda:99" is unavailable everywhere


def test_every_preset_passes_the_declared_checks(vco):
    from jit_core.config import PRESETS, check_config, get_preset, resolve
    from jit_core.plugins import Plugins
    for name in sorted(PRESETS):
        cfg = get_preset(name)
        check_config(resolve(cfg, Plugins(cfg.plugins).option_schemas()))


# ----------------------------------------------------------------------------------- writing files (issue #21)
# Links planted in a run folder, paths read from result files, a full disk, a read-only run folder: each ends in
# one line (or the right result), nothing outside the folder touched, the previous files whole. The writers
# themselves are walked one by one in tests/test_writes.py; these rows go through the real CLI.
from .test_writes import PRECIOUS, fill, read_only, small_fs  # noqa: E402 -- this block's own helpers


def _link(name: str, dangling: bool = False):
    def plant(run, tmp):
        target = tmp / "outside" / name
        target.parent.mkdir(exist_ok=True)
        if not dangling:
            target.write_bytes(PRECIOUS)
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
    return plant


def _eval_link(run, tmp):
    (run / "eval").mkdir(exist_ok=True)
    name = "step00000002-ema1-n2-heun1-cfg1-seed0.json"
    (tmp / "outside").mkdir(exist_ok=True)
    (tmp / "outside" / "victim").write_bytes(PRECIOUS)
    (run / "eval" / name).symlink_to(tmp / "outside" / "victim")


RESUME = ["train", "--resume", "{run}", "train.max_steps=3"]
# (id, damage(run, tmp), command after `jit`, fragments of the one error line; None: the command succeeds)
WRITES = [
    ("lock-link", _link(".lock"), RESUME, [".lock is a symbolic link, where the trainer writes", "remove it"]),
    ("lock-dangling-link", _link(".lock", dangling=True), RESUME, [".lock is a symbolic link"]),
    ("config-json-tmp-link", _link("config.json.tmp"), RESUME, None),      # no longer a name the trainer writes
    ("metrics-jsonl-link", _link("metrics.jsonl"), RESUME, ["metrics.jsonl is a symbolic link", "remove it"]),
    ("history-jsonl-link", _link("history.jsonl"), [*RESUME, "optim.lr=5e-4", "--allow-change", "optim.lr"],
     ["history.jsonl is a symbolic link"]),
    ("evaluate-point-json-link", _eval_link,
     ["evaluate", "{run}", "--num-images", "2", "--cfg", "1", "--metrics", "none", "--save", "none"],
     ["step00000002-ema1-n2-heun1-cfg1-seed0.json is a symbolic link", "remove the link"]),
]


@pytest.mark.parametrize("case", WRITES, ids=[c[0] for c in WRITES])
def test_links_in_a_run_folder(cli, run_copy, tmp_path, case):
    _, damage, command, fragments = case
    damage(run_copy, tmp_path)
    outside = {p.name: p.read_bytes() for p in (tmp_path / "outside").iterdir()}
    res = invoke(cli, *[c.format(run=run_copy) for c in command])
    if fragments is None:
        assert res.exit_code == 0, res.output
        assert not (run_copy / "config.json").is_symlink() and json.loads((run_copy / "config.json").read_text())
    else:
        one_line_error(res, *fragments)
    # the targets untouched, and no file created outside the run folder (a dangling link's target stays absent)
    assert {p.name: p.read_bytes() for p in (tmp_path / "outside").iterdir()} == outside


GRID = ["--ema", "ema1,ema2", "--cfg", "1,2", "--num-images", "2", "--metrics", "none", "--save", "none"]


def test_a_grid_rerun_writes_under_the_folder_by_name_never_to_a_stored_path(cli, run_copy, tmp_path, monkeypatch):
    """Case 4: a crafted "json" field, a copied run folder, another working directory."""
    monkeypatch.chdir(run_copy.parent)
    assert invoke(cli, "evaluate", "run", *GRID).exit_code == 0              # a relative path, as typed
    points = sorted((run_copy / "eval").glob("step*-ema1-*cfg1-*.json"))
    rec = json.loads(points[0].read_text())
    assert rec["json"] == f"eval/{points[0].name}"                       # stored relative to the run folder
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    rec["json"] = str(victim)                                            # crafted: a write target elsewhere
    points[0].write_text(json.dumps(rec))
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(run_copy, copy)
    original = _snapshot(run_copy)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = invoke(cli, "evaluate", "../copy", *GRID)
    assert res.exit_code == 0, res.output
    assert victim.read_bytes() == PRECIOUS                               # the crafted path was not written
    assert _snapshot(run_copy) == original                               # the copy never touched the original
    again = json.loads((copy / "eval" / points[0].name).read_text())
    assert again["resumed"] and again["json"] == f"eval/{points[0].name}"


@pytest.fixture
def full_fs(tmp_path):
    with small_fs(tmp_path / "fs", "6m") as fs:
        yield fs


def test_evaluate_on_a_full_disk_is_one_line_and_keeps_the_previous_result(cli, run_copy, full_fs):
    args = ["evaluate", run_copy, "--num-images", "2", "--metrics", "none", "--save", "npz", "--out", full_fs]
    assert invoke(cli, *args).exit_code == 0
    before = _snapshot(full_fs)
    fill(full_fs)
    one_line_error(invoke(cli, *args), "disk full: could not write", "free space in", "re-run")
    (full_fs / "filler").unlink()
    assert _snapshot(full_fs) == before


def test_compare_on_a_full_disk_is_one_line_and_keeps_the_previous_report(cli, run_copy, full_fs):
    import shutil
    other = shutil.copytree(run_copy, run_copy.parent / "other")
    args = ["compare", run_copy, other, "--out", full_fs / "report", "--num-samples", "4"]
    first = invoke(cli, *args)
    assert first.exit_code == 0, first.output
    before = _snapshot(full_fs)
    fill(full_fs)
    one_line_error(invoke(cli, *args), "disk full: could not write", "free space in")
    (full_fs / "filler").unlink()
    assert _snapshot(full_fs) == before                                   # every file of the report whole


@pytest.mark.parametrize("command", [["evaluate", "{run}", "--num-images", "2", "--metrics", "none"], RESUME],
                         ids=["evaluate", "resume"])
def test_a_read_only_run_folder_is_one_line(cli, finished, tmp_path, command):
    import shutil
    with small_fs(tmp_path / "fs", "64m") as fs:
        run = shutil.copytree(finished, fs / "run")
        read_only(fs)
        before = _snapshot(run)
        one_line_error(invoke(cli, *[c.format(run=run) for c in command]), "is on a read-only file system",
                       "make it writable")
        assert _snapshot(run) == before


# ----------------------------------------------------------------------------------- loaded files (issue 21, guards)
# Every file a command loads is checked before use: configs (new, saved, resumed), weights (shape, dtype,
# finiteness), trainer.pt (its schema), result JSONs (their types), image folders (empty classes, image modes).
def _image_folder(tmp, empty: bool = False, mode: str = "RGB"):
    """``tmp/images/<class>/<i>.png`` (2 classes x 20 images; with ``empty`` a third, empty class folder; with mode
    "F" the first class holds 32-bit float TIFFs)."""
    from PIL import Image
    root = tmp / "images"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(20):
            if mode == "F" and c == 0:
                Image.fromarray(np.full((8, 8), i, np.float32), "F").save(root / f"c{c}" / f"{i}.tif")
            else:
                Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(root / f"c{c}" / f"{i}.png")
    if empty:
        (root / "c2-empty").mkdir()
    return root


def _folder_args(**kw):
    return lambda tmp: ["data.name=folder", f"data.path={_image_folder(tmp, **kw)}", "optim.batch_size=4"]


TRAIN_GUARDS = [
    ("cfg-inf", _args("sample.cfg=inf"), ["bad value 'inf' for sample.cfg: expected a finite number"]),
    ("lr-nan", _args("optim.lr=nan"), ["bad value 'nan' for optim.lr: expected a finite number"]),
    ("ema-decay-nan", _args("optim.ema_decays=0.9,nan"), ["bad value 'nan' for optim.ema_decays"]),
    ("config-file-infinity", _file("inf.json", '{"sample": {"cfg": Infinity}}'),
     ["bad value inf for sample.cfg: expected a finite number"]),
    ("config-file-nested-100000-deep", _file("deep.json", "[" * 100_000 + "]" * 100_000),
     ["deep.json is nested too deeply to be a config"]),
    ("config-file-not-a-table", _file("list.json", "[1, 2]"), ["list.json must hold a table of keys, not list"]),
    ("config-file-section-not-a-table", _file("sec.json", '{"optim": 3}'), ["optim is a section, not a value"]),
    ("config-file-plugin-options-not-tables", _file("po.json", '{"plugin_options": {"vco": 3}}'),
     ["plugin_options must be a table of tables"]),
    ("empty-class-folder", _folder_args(empty=True), ["class folder", "c2-empty holds no images", "add images"]),
    ("image-mode-without-range", _folder_args(mode="F"), ["c0: 0.tif has image mode 'F'", "convert the folder"]),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["start", "dry-run"])
@pytest.mark.parametrize("case", TRAIN_GUARDS, ids=[c[0] for c in TRAIN_GUARDS])
def test_bad_loaded_train_input(cli, tmp_path, case, dry_run):
    test_bad_train_input(cli, tmp_path, case, dry_run)


def _config(edit):
    def damage(run):
        path = run / "config.json"
        if callable(edit):
            data = json.loads(path.read_text())
            edit(data)
            path.write_text(json.dumps(data))
        else:
            path.write_text(edit)
    return damage


def _weights(name, change):
    """Rewrite ``<name>.safetensors`` of the checkpoint with ``change(state dict)`` and re-hash it in the manifest
    (so only the content check can catch it)."""
    def damage(run):
        from safetensors.torch import load_file, save_file
        ckpt = run / "checkpoints" / "step-00000002"
        sd = load_file(str(ckpt / f"{name}.safetensors"))
        change(sd)
        save_file(sd, str(ckpt / f"{name}.safetensors"))
        _rehash(ckpt, f"{name}.safetensors")
    return damage


def _trainer_state(state):
    def damage(run):
        ckpt = run / "checkpoints" / "step-00000002"
        torch.save(state, ckpt / "trainer.pt")
        _rehash(ckpt, "trainer.pt")
    return damage


def _optimizer_moment_reshaped(run):
    ckpt = run / "checkpoints" / "step-00000002"
    state = torch.load(ckpt / "trainer.pt", weights_only=True)
    moments = state["optimizer"]["state"][0]
    moments["exp_avg"] = torch.zeros(moments["exp_avg"].numel() + 1)
    torch.save(state, ckpt / "trainer.pt")
    _rehash(ckpt, "trainer.pt")


def _first_key(sd):
    return sorted(sd)[0]


def _nan(sd):
    sd[_first_key(sd)][..., 0] = float("nan")


def _reshape(sd):
    key = next(k for k, v in sorted(sd.items()) if v.dim() == 2)
    sd[key] = torch.zeros(sd[key].shape[0] + 1, sd[key].shape[1])


def _ints(sd):
    sd[_first_key(sd)] = sd[_first_key(sd)].long()


def _result_json(metrics):
    def damage(run):
        (run / "eval").mkdir(exist_ok=True)
        rec = {"name": "x", "metrics": metrics, "metric_kind": "classifier", "checkpoint": {"weights": "ema1", "step": 2}}
        (run / "eval" / "x.json").write_text(json.dumps(rec))
    return damage


_DEEP = "[" * 100_000 + "]" * 100_000
RUNS_GUARDS = [
    ("sample-config-invalid-json", _config("{"), ["sample", "{run}"], ["config.json is not valid JSON", "line 1"]),
    ("evaluate-config-invalid-json", _config("{"), ["evaluate", "{run}", "--num-images", "4"],
     ["config.json is not valid JSON"]),
    ("resume-config-invalid-json", _config("{"), ["train", "--resume", "{run}"], ["config.json is not valid JSON"]),
    ("sample-config-nested-100000-deep", _config(_DEEP), ["sample", "{run}"], ["config.json is nested too deeply"]),
    ("evaluate-config-nested-100000-deep", _config(_DEEP), ["evaluate", "{run}", "--num-images", "4"],
     ["config.json is nested too deeply"]),
    ("sample-config-bad-value", _config(lambda d: d["sample"].update(steps=0)), ["sample", "{run}"],
     ["config.json: sample.steps=0: must be > 0", "restore the run's config.json"]),
    ("evaluate-config-bad-value", _config(lambda d: d["sample"].update(method="rk4")),
     ["evaluate", "{run}", "--num-images", "4"], ["config.json: sample.method=rk4: must be one of heun, euler"]),
    ("sample-config-cfg-infinite", _config(lambda d: d["sample"].update(cfg=float("inf"))), ["sample", "{run}"],
     ["config.json: bad value inf for sample.cfg: expected a finite number"]),
    ("sample-config-wrong-type", _config(lambda d: d["train"].update(max_steps="many")), ["sample", "{run}"],
     ["config.json: bad value 'many' for train.max_steps: expected int"]),
    ("sample-config-not-a-table", _config("[1]"), ["sample", "{run}"], ["must hold a table of keys, not list"]),
    ("sample-cfg-inf", None, ["sample", "{run}", "--cfg", "inf"], ["--cfg inf", "must be >= 0 and finite"]),
    ("evaluate-cfg-nan", None, ["evaluate", "{run}", "--cfg", "1.5,nan", "--num-images", "4"],
     ["--cfg", "1.5,nan: each CFG scale must be >= 0 and finite"]),
    ("sample-ema-nan", _weights("ema1", _nan), ["sample", "{run}"], ["ema1.safetensors", "NaN/inf value(s)"]),
    ("resume-ema-nan", _weights("ema1", _nan), ["train", "--resume", "{run}"], ["ema1.safetensors", "NaN/inf value(s)"]),
    ("resume-model-nan", _weights("model", _nan), ["train", "--resume", "{run}"], ["model.safetensors", "NaN/inf"]),
    ("sample-ema-int64", _weights("ema1", _ints), ["sample", "{run}"],
     ["ema1.safetensors", "is a torch.int64 tensor, but ema1 weights are floating point"]),
    ("resume-ema-wrong-shape", _weights("ema2", _reshape), ["train", "--resume", "{run}"],
     ["ema2.safetensors is for a different model", "in the file"]),
    ("trainer-pt-not-a-dict", _trainer_state([1, 2]), ["train", "--resume", "{run}"],
     ["trainer.pt holds a list, not the dict jit-vco writes"]),
    ("trainer-pt-step-a-string", _trainer_state({"step": "six"}), ["train", "--resume", "{run}"],
     ["trainer.pt: 'step' is a str, expected int"]),
    ("trainer-pt-optimizer-a-list", _trainer_state({"step": 2, "optimizer": [1]}), ["sample", "{run}"],
     ["trainer.pt: 'optimizer' is a list, expected dict"]),
    ("trainer-pt-optimizer-moment-wrong-shape", _optimizer_moment_reshaped, ["train", "--resume", "{run}"],
     ["trainer.pt holds an optimizer state that does not fit this run", "its exp_avg has shape"]),
    ("trainer-pt-without-step", _trainer_state({"elapsed": 1.0}), ["train", "--resume", "{run}"],
     ["trainer.pt has no 'step'"]),
    ("compare-non-numeric-metric", _result_json({"fd_classifier": "good"}), ["compare", "{run}", "--out", "{tmp}/rep"],
     ["x.json: metric 'fd_classifier' is 'good', not a finite number", "evaluate the run again"]),
    ("compare-metrics-not-an-object", _result_json([1]), ["compare", "{run}", "--out", "{tmp}/rep"],
     ["x.json: 'metrics' is a list, not an object"]),
    ("compare-run-listed-twice", None, ["compare", "--arm", "A={run},{run}", "--out", "{tmp}/rep"],
     ["is listed twice in arm 'A': one run is one training seed; list each run once"]),
    ("compare-run-in-two-arms", None, ["compare", "--arm", "A={run}", "--arm", "B={run}", "--out", "{tmp}/rep"],
     ["is listed in arms 'A' and 'B'"]),
]


@pytest.mark.parametrize("case", RUNS_GUARDS, ids=[c[0] for c in RUNS_GUARDS])
def test_bad_loaded_file_of_a_run(cli, run_copy, tmp_path, monkeypatch, case):
    _, damage, command, fragments = case
    damage and damage(run_copy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _snapshot(run_copy)
    res = invoke(cli, *[c.format(run=run_copy, tmp=tmp_path) for c in command])
    one_line_error(res, *fragments)
    assert _snapshot(run_copy) == before                          # nothing written, nothing sampled


def test_the_guards_table_is_large_enough():
    assert len(TRAIN_GUARDS) + len(RUNS_GUARDS) >= 30
