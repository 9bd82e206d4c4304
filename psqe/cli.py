"""The ``psqe`` command line.

``psqe features DATASET --setting R2 --out F`` builds a benchmark feature set
offline; ``psqe seeds DATASET --features F --out DIR`` writes PSQE seeds
(TSV, int32 .npy, per-stage files, a JSON report; atomically).
``psqe align DATASET --seeds FILE --model M`` trains and evaluates one
aligner; ``psqe reproduce --dataset D --setting R2 --out DIR`` runs the
paper's Table 1 or 2 as a resumable report folder (:mod:`psqe.reproduce`).
``psqe info`` reports which backend runs; ``psqe demo`` is the quick
start's main job (:mod:`psqe.demo`): PSQE, Type I and Type II seeds on a
synthetic multimodal KG pair, their quality side by side, and a plot of where
the seeds fall.

The console script is :func:`run`: bad input (a ``ValueError`` or
``OSError`` whose message names the file, line or argument, or an
``ImportError`` naming a missing optional package) ends with
``psqe: error: ...`` and exit status 2, as argparse's own errors do, not a
traceback; Ctrl-C ends with ``psqe: interrupted`` and status 130; ``-v``
keeps the traceback. :func:`main` raises, for callers.

Example (in a shell)::

    psqe demo --entities 10000 --seeds 1000 --out psqe-demo
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from . import __version__, ops

log = logging.getLogger("psqe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="psqe", description="Pseudo seeds for unsupervised multimodal entity alignment.")
    parser.add_argument("--version", action="version", version=f"psqe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="which compiled backends are available")
    demo = sub.add_parser("demo", help="PSQE vs Type I vs Type II seeds on a synthetic multimodal KG pair")
    demo.add_argument("--entities", type=int, default=10000, help="entities per side (default 10000)")
    demo.add_argument("--seeds", type=int, default=1000, help="seed budget (default 1000)")
    demo.add_argument("--epochs", type=int, default=100, help="Stage II tuning epochs (default 100; the paper uses 300)")
    demo.add_argument("--seed", type=_seed_value, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    demo.add_argument("--out", default="psqe-demo", help="folder for report.json, seeds_*.tsv, seed_distribution.svg "
                      "(default ./psqe-demo; '-' writes nothing)")
    feats = sub.add_parser("features", help="build a benchmark feature set (R0/R1/R2) for a dataset, offline")
    feats.add_argument("dataset", help="dataset folder, or a name such as DBP15K/zh_en with --root / PSQE_DATA")
    feats.add_argument("--setting", choices=["R0", "R1", "R2"], default="R2",
                       help="R0: the EVA image pickles; R1: names as the visual pivot; R2: simulated images from the "
                            "gold links, names for the aligners only (default R2; README, 'Feature settings')")
    feats.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    feats.add_argument("--root", default=None, help="data root for dataset names")
    feats.add_argument("--cache-dir", default=None, help="text-encoder cache (default $PSQE_CACHE or ~/.cache/psqe)")
    feats.add_argument("--seed", type=_seed_value, default=0)
    feats.add_argument("--device", default="cpu")
    feats.add_argument("--simulation-budget", type=int, default=None,
                       help="R2: calibrate the simulated images so that this many Type I seeds are 75%% precise "
                            "(default: the paper's seed budget for the dataset, a tenth of the smaller graph where "
                            "that is larger than the graph)")
    feats.add_argument("--no-text", action="store_true",
                       help="no text encoder: leave out the seed generator's relation/attribute text slots "
                            "(R0/R2; the aligners' inputs only, for a machine without the text model)")
    seeds = sub.add_parser("seeds", help="PSQE seeds for a dataset with a feature file")
    seeds.add_argument("dataset", help="dataset folder, or a name with --root / PSQE_DATA")
    seeds.add_argument("--features", required=True, help="feature file from `psqe features`")
    seeds.add_argument("--out", required=True, help="output folder (seeds.tsv, seeds.npy, stage files, report.json)")
    seeds.add_argument("--root", default=None)
    seeds.add_argument("--config", default=None, help="JSON file of PSQEConfig fields")
    seeds.add_argument("--budget", type=int, default=None, help="seed budget; overrides the config's (default: "
                       "the config's, else the paper's for the dataset: 5000 on DWY15K's dbp_wd_15k splits, else 1000)")
    seeds.add_argument("--seed", type=_seed_value, default=None, help="overrides the config's seed")
    seeds.add_argument("--device", default=None, help="overrides the config's device")
    seeds.add_argument("--visual-precision", choices=["float32", "bfloat16"], default=None,
                       help="Stage II visual encoder products (default float32, the paper's; bfloat16 is "
                            "about 1.4x faster end to end on CPUs with AMX, with slightly different seeds)")
    align = sub.add_parser("align", help="train and evaluate an aligner on a dataset with a seeds file")
    align.add_argument("dataset", help="dataset folder, or a name with --root / PSQE_DATA")
    align.add_argument("--seeds", required=True, help="seeds file: id1<TAB>id2 lines (global ids) or an int [S, 2] .npy")
    align.add_argument("--model", required=True, help="eva, mclea, meaformer or pcmea")
    _common_align_options(align)
    align.add_argument("--protocols", default="legacy,clean", help="comma-separated: legacy, clean (default both)")
    align.add_argument("--clean-exclude", default="", help="comma-separated seed files compared with --seeds: their "
                       "entities are kept out of the clean test set too (as are --seeds' and the 30%% gold "
                       "split's), so that every run scores on one test set")
    align.add_argument("--out", default=None, help="also write the metrics to this JSON file (atomically)")
    rep = sub.add_parser("reproduce", help="the paper's Table 1 (DBP15K) or 2 (DWY15K) for one dataset and setting, as a resumable report folder")
    rep.add_argument("--dataset", required=True, help="dataset folder or name, e.g. DBP15K/zh_en")
    rep.add_argument("--models", default="eva,mclea,meaformer,pcmea", help="aligners (default: all four)")
    rep.add_argument("--seeds", default="uvp,multimodal,psqe",
                     help="seed sets: uvp, multimodal, psqe (default), and for the paper's Table 3 psqe-no-visual, "
                          "psqe-no-relation, psqe-no-attribute (PSQE without that modality), for its Table 6 psqe-fixed "
                          "(PSQE cut to --budget seeds)")
    rep.add_argument("--no-supervised", action="store_true", help="skip the 30%%-gold reference row")
    rep.add_argument("--protocols", default="legacy,clean", help="comma-separated: legacy, clean (default both)")
    rep.add_argument("--budget", type=int, default=None,
                     help="seed budget of every generator (default: the paper's, 5000 on DWY15K's dbp_wd_15k splits, else 1000)")
    rep.add_argument("--psqe-epochs", type=int, default=None, help="Stage II tuning epochs (default 300)")
    rep.add_argument("--out", required=True, help="report folder (an interrupted run resumes from it; a seed set added on resume "
                     "that touches other gold links changes the clean test set, and every finished cell then "
                     "trains again)")
    _common_align_options(rep)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out_kind = {"features": "file", "seeds": "folder", "reproduce": "folder", "align": "file", "demo": "folder"}
    if args.command in out_kind and getattr(args, "out", None) is not None:
        if args.out == "-" and args.command != "demo":  # demo's '-' writes nothing; elsewhere it is no stdout
            parser.error("--out -: this command writes files; give a path")
        if args.out != "-":
            args.out = str(Path(args.out).expanduser())  # the path every writer then uses
            _check_out(parser, args.out, out_kind[args.command])
    if args.command == "features":
        if args.no_text and args.setting == "R1":
            parser.error("--no-text: R1's visual slot is the text embedding of the names; use R0 or R2")
        if args.simulation_budget is not None and (args.setting != "R2" or args.simulation_budget < 1):
            parser.error(f"--simulation-budget {args.simulation_budget}: a count >= 1, for --setting R2 only")
        _check_device(parser, args.device)
        return _features(args)
    if args.command == "seeds":
        return _seeds(args, parser)
    if args.command in ("align", "reproduce"):
        return _align_or_reproduce(args, parser)
    if args.command == "info":
        report = {"version": __version__, "backend": ops.backend(), **ops.backends(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "cuda_device": torch.cuda.is_available()}
    else:
        from .demo import run_demo

        for name in ("entities", "seeds"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.epochs < 0:
            parser.error(f"--epochs must be >= 0, got {args.epochs}")
        if args.seeds > args.entities:
            parser.error(f"--seeds {args.seeds} exceeds --entities {args.entities}")
        _check_device(parser, args.device)
        report = run_demo(args.entities, args.seeds, args.epochs, args.seed, args.device, None if args.out == "-" else args.out)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _common_align_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setting", choices=["R0", "R1", "R2"], default="R2", help="feature setting (default R2)")
    p.add_argument("--features", default=None, help="feature file from `psqe features` (default: build it; reproduce "
                   "keeps it in --out, align builds it again each run)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs, the model's schedule scaled to them (default: the model's)")
    p.add_argument("--surface", action="store_true", help='"w/ surface": the aligners also read names and characters')
    p.add_argument("--iterative", action="store_true",
                   help="iterative learning: the schedule, then as many epochs again adding mutual nearest neighbours "
                        "(eva, mclea, meaformer; PCMEA has its own pseudo-labels)")
    p.add_argument("--root", default=None, help="data root for dataset names")
    p.add_argument("--cache-dir", default=None, help="text-encoder cache (default $PSQE_CACHE or ~/.cache/psqe)")
    p.add_argument("--clean-selection", choices=["final", "val", "mnn"], default="final",
                   help="clean protocol: keep the last epoch (default), the best on 10%% of the seeds held out, or "
                        "(mnn, label-free) the one with the most mutual nearest neighbours among entities no seed uses "
                        "(PCMEA's pseudo-links count too: it keeps about its last epoch)")
    p.add_argument("--seed", type=_seed_value, default=42,
                   help="seed of the seed generators and the aligners' training (default 42)")
    p.add_argument("--train-seed", type=_seed_value, default=None,
                   help="seed of the aligners' training alone (default: --seed); another one over the same seeds "
                        "measures the run-to-run spread")
    p.add_argument("--device", default="cpu")


def _align_or_reproduce(args, parser) -> int:
    from .reproduce import ReproduceConfig, reproduce

    def names(text: str) -> tuple[str, ...]:
        return tuple(x.strip().lower() for x in text.split(",") if x.strip())

    _check_device(parser, args.device)
    for flag in ("epochs", "psqe_epochs"):  # named as the user typed them
        value = getattr(args, flag, None)
        if value is not None and value < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    common = dict(setting=args.setting, protocols=names(args.protocols), clean_selection=args.clean_selection,
                  epochs=args.epochs, surface=args.surface, iterative=args.iterative, seed=args.seed, train_seed=args.train_seed,
                  device=args.device, root=args.root, features=args.features, cache_dir=args.cache_dir)
    try:
        if args.command == "align":
            config = ReproduceConfig(dataset=args.dataset, models=(args.model.lower(),), seeds=(), supervised=True, **common)
        else:
            config = ReproduceConfig(dataset=args.dataset, models=names(args.models), seeds=names(args.seeds),
                                     supervised=not args.no_supervised, budget=args.budget,
                                     psqe_epochs=args.psqe_epochs, **common)
    except ValueError as err:
        parser.error(str(err).removeprefix("reproduce: ") if args.command == "align" else str(err))
    if args.clean_selection != "final" and "clean" not in config.protocols:
        parser.error(f"--clean-selection {args.clean_selection} picks the clean protocol's epoch; add clean to "
                     "--protocols or drop it")
    if args.command == "align" and args.clean_exclude and "clean" not in config.protocols:
        parser.error("--clean-exclude shapes the clean test set; add clean to --protocols or drop it")
    if args.command == "reproduce":
        reproduce(config, args.out, progress=sys.stderr.isatty())
        log.info("report written to %s (table.md, table.csv, seed_quality.md, h1.svg, seed_distribution.svg)", args.out)
        return 0
    from .reproduce.cells import load_pair, run_cell
    from .seeds.io import read_seeds

    seeds, seed_lines = read_seeds(args.seeds, with_lines=True)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pair, data = load_pair(config, Path(tmp))
    files = [f.strip() for f in args.clean_exclude.split(",") if f.strip()]  # paths: case kept
    others = [read_seeds(f, with_lines=True) for f in files]
    data.pairs_from_global(seeds, what=f"seeds file {args.seeds}", places=seed_lines)  # unknown entities: before training
    for path, (table, places) in zip(files, others):
        data.pairs_from_global(table, what=f"--clean-exclude file {path}", places=places)
    others = [table for table, _ in others]
    cell = run_cell(config, pair, data, config.models[0], Path(args.seeds).name, seeds,
                    progress=sys.stderr.isatty(), clean_exclude=others)
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("models", "seeds", "supervised", "budget", "psqe_epochs")}
    text = json.dumps({**cell, "run": {**settings, "seeds_file": str(args.seeds), "clean_exclude": files}}, indent=2,
                      default=str)
    sys.stdout.write(text + "\n")  # first: a failing --out cannot lose the metrics
    if args.out:
        from .features._util import atomic_write

        try:
            atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
        except OSError as err:
            raise OSError(f"--out {args.out}: {err.strerror or err} (the metrics are on stdout)") from None
    return 0


def _check_out(parser, path: str, kind: str) -> None:
    """``--out`` before any work is done: a file path (``kind="file"``) or a folder that can be written.

    The nearest existing folder is probed with a temporary file (removed at once): a path under a read-only
    or virtual file system fails here, not after the run, and a folder given for a file (or the reverse) is
    named."""
    import os
    import tempfile

    target = Path(path)
    if target.is_symlink() and not target.exists():
        parser.error(f"--out {path}: a symbolic link to nothing ({os.readlink(target)})")
    real = Path(os.path.realpath(target))  # symbolic links and '..' resolved as the writers will meet them
    if kind == "file" and real.is_dir():
        parser.error(f"--out {path}: is a folder; expected a file path")
    if kind == "folder" and real.exists() and not real.is_dir():
        parser.error(f"--out {path}: exists and is not a folder; expected a folder (made if missing)")
    probe = real if kind == "folder" else real.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        parser.error(f"--out {path}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".psqe-out-check.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        parser.error(f"--out {path}: cannot write in {probe} ({err.strerror or err})")


def _seed_value(text: str) -> int:
    """``--seed``: an integer in ``[0, 2**32 - 1]`` (numpy's range; torch's is wider), checked as it is parsed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32 - 1], got {value}")
    return value


def _check_device(parser, device: str, what: str = "--device") -> None:
    """``device`` must name the CPU or an available CUDA device (before any data is loaded)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        parser.error(f"{what} {device!r}: not a device name (cpu, cuda, cuda:N)")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"{what} {device!r}: psqe runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"{what} {device}: no CUDA device is available")


def _features(args) -> int:
    from .data import load_dataset
    from .features import build_feature_set, save_feature_set

    pair = load_dataset(args.dataset, root=args.root)
    simulation = None if args.simulation_budget is None else {"budget": args.simulation_budget}
    summary = build_feature_set(pair, args.setting, cache_dir=args.cache_dir, seed=args.seed, device=args.device,
                                text=not args.no_text, simulation=simulation)
    save_feature_set(pair, args.out, summary)
    json.dump(summary, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


def _seeds(args, parser) -> int:
    from .data import load_dataset
    from .features import load_feature_set, require_seed_slots
    from .seeds.compare import compare_generators, write_distribution_plot
    from .seeds.config import PSQEConfig, paper_budget
    from .seeds.io import write_result
    from .seeds.pipeline import generate_seeds

    fields = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                fields = json.load(fh)
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"--config {args.config}: {err}")
        if not isinstance(fields, dict):
            parser.error(f"--config {args.config}: expected a JSON object of PSQEConfig fields")
    for name in ("budget", "seed", "device"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if "budget" not in fields:
        fields["budget"] = paper_budget(args.dataset)
        log.info("seed budget %d: the paper's for %s (--budget to change it)", fields["budget"], args.dataset)
    if not isinstance(fields.get("tuning", {}), dict):
        parser.error(f"--config {args.config}: tuning must be a JSON object of TuningConfig fields")
    if args.visual_precision is not None:
        fields["tuning"] = {**fields.get("tuning", {}), "visual_precision": args.visual_precision}
    try:
        config = PSQEConfig().replace(**fields)
    except (TypeError, ValueError) as err:
        parser.error(f"{'--config ' + args.config if args.config else 'psqe seeds'}: {err}")
    _check_device(parser, config.device, "--device" if args.device is not None else f"--config {args.config}: device")
    pair = load_dataset(args.dataset, root=args.root)
    load_feature_set(pair, args.features)
    require_seed_slots(pair, f"--features {args.features}")
    result = generate_seeds(pair.kg1, pair.kg2, config, links=pair.links)
    _, seeds, quality = compare_generators(pair, config, result=result)
    write_result(result, args.out, dataclasses.asdict(config), generators=quality,  # the plot before the report
                 before_report=lambda out: write_distribution_plot(out / "seed_distribution.svg", pair, seeds,
                                                                    result.clusters))
    log.info("wrote %d seeds, the report and seed_distribution.svg to %s", result.seeds.shape[0], args.out)
    return 0


def run(argv: list[str] | None = None) -> int:
    """The ``psqe`` console script: :func:`main`, with bad input reported in one line (module docstring).

    >>> run(["seeds", "no/such/folder", "--features", "f.safetensors", "--out", "out"])  # stderr: psqe: error: ...
    2
    """
    given = sys.argv[1:] if argv is None else argv
    verbose = "-v" in given or "--verbose" in given
    try:
        return main(argv)
    except (ValueError, OSError, ImportError) as err:  # DatasetError and UnsafePickleError are ValueErrors;
        if verbose:                                    # ImportError: an optional package (its message says which)
            raise
        sys.stderr.write(f"psqe: error: {err}\n")
        return 2
    except KeyboardInterrupt:  # outputs are written atomically: nothing half-written is left
        if verbose:
            raise
        sys.stderr.write("psqe: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(run())
