"""The ``longtail`` command: quickstart, recipes, train, evaluate.

Every user-facing problem is a ``LongtailError``: printed as one message with its fix, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .config import TTA_MODES
from .errors import LongtailError


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder that holds the data set (e.g. ../shared/data for cifar-10-batches-py)")
    p.add_argument("--out", help="run folder (default: runs/RECIPE); an existing one is resumed")
    p.add_argument("--epochs", type=int, help="number of epochs (the schedule scales with it)")
    p.add_argument("--seeds", type=int, nargs="+", help="one run per seed, then mean and standard deviation")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: the recipe's)")
    p.add_argument("--imbalance-ratio", type=float, help="rho = n_max / n_min of the long-tailed subset")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="base learning rate")
    p.add_argument("--init-from", help="initialise the backbone from a pre-training run folder or checkpoint")
    p.add_argument("--val-per-class", type=int, help="hold out a balanced validation split (images per class)")
    p.add_argument("--no-download", action="store_true", help="never download; stop if the data is absent")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting by dotted name, e.g. --set loss.name=focal --set train.sampler=class-balanced")
    p.add_argument("--stack-seeds", choices=["auto", "on", "off"], default="off",
                   help="train several seeds concurrently as one fused network (auto: on CUDA when possible); "
                   "off by default until a GPU benchmark shows stacked seeds equal to separate runs and faster")
    p.add_argument("--restart", action="store_true", help="delete an existing run folder instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--show-config", action="store_true",
                   help="print every setting (with these options applied) as TOML, with the schedule in the run's "
                   "own epochs, and exit; `longtail train --config FILE` runs from it")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in longtail's form: the problem, then a fix."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"longtail: error: {message}\n  fix: see `{self.prog} --help` for the accepted options", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longtail", description="Deep learning on long-tailed data.")
    parser.add_argument("--version", action="version", version=f"longtail {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="a first result on a built-in long-tailed data set (CPU, < 1 minute)")
    q.add_argument("--out", help="run folder (default runs/quickstart, or runs/quickstart-cifar10 with --data-root); "
                   "an existing one is resumed, as with train")
    q.add_argument("--data-root", help="a folder that holds CIFAR-10 (DATA_ROOT/cifar-10-batches-py): a first result "
                   "on real data instead, CIFAR-10-LT rho 100 with the fast recipe cifar10-lt-fast-la (about 80.5 %% "
                   "top-1 in about 9 minutes on 2 CPU cores); nothing is downloaded")
    q.add_argument("--device", choices=["auto", "cpu", "cuda"], help="with --data-root (default auto)")
    q.add_argument("--epochs", type=int, help="number of epochs (default 30)")
    q.add_argument("--restart", action="store_true", help="delete an existing run folder instead of resuming it")
    q.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    sub.add_parser("recipes", help="list the named recipes")

    t = sub.add_parser("train", help="train a recipe (or a configuration file) into a run folder")
    t.add_argument("recipe", nargs="?", help="a recipe name (`longtail recipes`); or leave it out and pass --config")
    t.add_argument("--config", help="a configuration file: TOML as --show-config prints it, a run folder's "
                   "config.json, or a run folder; the other options apply on top")
    _add_run_options(t)

    pt = sub.add_parser("pretrain", help="self-supervised pre-training of a backbone (rotation, MoCo v2, "
                        "SimSiam, rwSAM)")
    pt.add_argument("method", help="rotation | moco | moco-rwsam | simsiam | simsiam-rwsam, or a pre-training recipe")
    pt.add_argument("--dataset", help="with a method name: the data set (default cifar10)")
    _add_run_options(pt)

    e = sub.add_parser("evaluate", help="re-evaluate a run (or checkpoint) and rewrite its report")
    e.add_argument("run", help="run folder or checkpoint file")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--data-root", help="where the data is now, if it moved")
    e.add_argument("--tta", choices=list(TTA_MODES), help="evaluate with this test-time augmentation instead of "
                   "the run's model.tta; the result is printed and the run's report is left as it is")
    d = sub.add_parser("decouple", help="re-balance a trained run's classifier: cRT, tau-norm, LWS, post-hoc "
                       "logit adjustment or weight balancing's second stage (wb)")
    d.add_argument("run", help="run folder (for several seeds, one seed-N folder) or checkpoint file")
    d.add_argument("--method", required=True, choices=["crt", "tau-norm", "lws", "logit-adjust", "wb"])
    d.add_argument("--epochs", type=int, help="crt/lws/wb training epochs (default: the source's for the data set)")
    d.add_argument("--tau", type=float, help="tau-norm/logit-adjust strength (default: chosen on the validation "
                   "split; logit-adjust without one: 1)")
    d.add_argument("--out", help="output folder (default RUN/decouple-METHOD)")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--data-root", help="where the data is now, if it moved")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--restart", action="store_true", help="start the output folder over instead of resuming it")
    d.add_argument("--bn", default="train", choices=["train", "frozen"],
                   help="crt/lws/wb: the frozen backbone's BatchNorm while the head trains: train (the references: "
                   "running statistics follow the training batches) or frozen (bit-identical backbone)")

    pl = sub.add_parser("pseudo-label", help="label an unlabeled pool with a trained run (then train on it with "
                        "--set data.pseudo_labels=DIR)")
    pl.add_argument("run", help="run folder (one seed) or checkpoint of the base model")
    pl.add_argument("--pool", required=True, help="unused:rho_u=100,factor=5 | rest (every image the labeled "
                    "data left) | darp | folder:PATH")
    pl.add_argument("--out", required=True, help="folder for pseudo_labels.pt/.json/.md")
    pl.add_argument("--threshold", type=float, default=0.0, help="keep labels with confidence >= T (default: all)")
    pl.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pl.add_argument("--data-root", help="where the data is now, if it moved")

    tu = sub.add_parser("tune", help="train a recipe at each point of a grid of settings and choose one on the "
                        "validation split (e.g. weight decay, as weight balancing tunes it)")
    tu.add_argument("recipe", help="a one-stage recipe name (`longtail recipes`)")
    tu.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a setting and its values, e.g. --grid train.weight_decay=2e-4,5e-4,1e-3,5e-3; several "
                    "--grid options make a product")
    tu.add_argument("--by", default="val_balanced", choices=["val_balanced", "val_top1"],
                    help="the validation score that chooses (default: balanced accuracy; with several --seeds, "
                    "its mean over them)")
    _add_run_options(tu)

    c = sub.add_parser("compare", help="compare run folders: one table (mean +- std over seeds) and a bar plot")
    c.add_argument("runs", nargs="+", help="run folders (single- or multi-seed)")
    c.add_argument("--out", default="runs/comparison", help="folder for comparison.md and comparison.png")
    c.add_argument("--names", nargs="+", help="display names, one per run")
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    ov: dict[str, Any] = {}
    simple = {
        "data_root": "data.root", "epochs": "train.epochs", "device": "train.device",
        "imbalance_ratio": "data.imbalance_ratio", "batch_size": "train.batch_size", "lr": "train.lr",
        "val_per_class": "data.val_per_class", "init_from": "train.init_from",
    }
    for attr, key in simple.items():
        v = getattr(args, attr, None)
        if v is not None:
            ov[key] = v
    if getattr(args, "no_download", False):
        ov["data.download"] = False
    for item in getattr(args, "sets", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise LongtailError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set loss.name=focal")
        ov[key.strip()] = value.strip()
    return ov


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import RECIPES

    width = max(len(n) for n in RECIPES)
    for r in RECIPES.values():
        pub = f"  [published: {r.published}]" if r.published else ""
        print(f"{r.name:<{width}}  {r.description}{pub}")
    return 0


def _train(recipe: Any, base: Any, args: argparse.Namespace, out: str) -> dict[str, Any]:
    """Train ``base`` (a ``RunConfig``) with the command line's options on top, into ``out``; ``recipe`` gives
    the second stage of a two-stage recipe (None: none)."""
    from .config import apply_overrides
    from .seeds import console_table, train_seeds

    cfg = apply_overrides(base, overrides_from_args(args))
    recipe_name = cfg.recipe
    if getattr(args, "show_config", False):
        print(show_config(cfg), end="")
        return {}
    if recipe is not None and recipe.needs_pretrained and not cfg.model.pretrained and not cfg.train.init_from:
        raise LongtailError(f"{recipe_name} starts from pre-trained weights, and none were given",
                            "pass --set model.pretrained=FILE, a local weights file (e.g. torchvision's "
                            "resnet50 ImageNet weights, saved with torch.save(model.state_dict(), FILE)); "
                            "longtail downloads nothing")
    restart = bool(getattr(args, "restart", False))
    if restart:
        _check_restart(out)
    seeds = args.seeds if getattr(args, "seeds", None) else [cfg.seed]
    t0 = time.perf_counter()
    progress = False if args.quiet else None
    stack = {"auto": None, "on": True, "off": False}[getattr(args, "stack_seeds", "off")]
    result = train_seeds(cfg, seeds, out, progress=progress, command=sys.argv, stack=stack, restart=restart)
    if recipe is not None and recipe.decouple and result:
        result = _decouple_seeds(recipe.decouple, Path(out), seeds, progress, epochs=recipe.decouple_epochs)
        out = str(Path(out) / f"decouple-{recipe.decouple}")
        if _rank() == 0 and "base" in result:  # one seed: the base run beside the result, and the tau chosen
            from .report import summary_table

            print()
            print(summary_table([(f"{recipe_name} (base run)", result["base"]),
                                 (f"{recipe_name} (+ {recipe.decouple})", result)]))
            if result.get("tau") is not None:
                print(f"tau = {result['tau']} ({result['tau_source']})")
            print(f"\nrun folder: {out}  ({time.perf_counter() - t0:.1f} s)")
            print(f"report: {Path(out) / 'report.md'}")
            return result
    if _rank() != 0:
        return result
    print()
    print(console_table(recipe_name, result))
    print(f"\nrun folder: {out}  ({time.perf_counter() - t0:.1f} s)")
    print(f"report: {Path(out) / 'report.md'}")
    return result


def _check_restart(out: str) -> None:
    """``--restart`` deletes only a folder that longtail wrote; the deleting itself waits until the
    settings and the data have been checked (in the run driver)."""
    from .runs import is_run_folder

    if Path(out).exists() and not is_run_folder(out):
        raise LongtailError(f"--restart would delete {out}, which is not a longtail run folder",
                            "pass an --out folder that longtail wrote (or a new one); delete other folders yourself")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints and deletes."""
    from .distributed import launch_rank

    return launch_rank()


def _decouple_seeds(method: str, out: Path, seeds: list[int], progress: bool | None,
                    epochs: int | None = None) -> dict[str, Any]:
    """Second stage of a two-stage recipe, for each seed; mean and spread in out/decouple-METHOD."""
    from .decouple import decouple_run
    from .metrics import aggregate_seeds
    from .report import write_seed_report

    if len(seeds) == 1:
        return decouple_run(out, method, progress=progress, epochs=epochs)
    results = [(f"seed {s}", decouple_run(out / f"seed-{s}", method, progress=progress, epochs=epochs)) for s in seeds]
    aggregate = aggregate_seeds([r for _, r in results])
    if _rank() == 0:
        write_seed_report(out / f"decouple-{method}", aggregate, results,
                          title=f"{method} after {out.name}: {len(seeds)} seeds (test set)")
    return {"aggregate": aggregate, "seeds": dict(results)}


def cmd_train(args: argparse.Namespace) -> int:
    from .config import config_from_file
    from .recipes import RECIPES, get_recipe

    if args.config and args.recipe:
        raise LongtailError(f"both a recipe ({args.recipe}) and --config {args.config} were given",
                            "pass one: the recipe, or the file (whose `recipe` names its recipe)")
    if args.config:  # the keys a file leaves out keep the values of the recipe it names
        base = config_from_file(args.config, lambda name: RECIPES[name].config if name in RECIPES else None)
        recipe = RECIPES.get(base.recipe)  # a file saved from a recipe keeps its second stage
        if recipe is not None and recipe.config.data.dataset != base.data.dataset:
            recipe = None
    elif args.recipe:
        recipe = get_recipe(args.recipe)
        base = recipe.config
    else:
        raise LongtailError("train needs a recipe or a configuration file",
                            "e.g. `longtail train cifar10-lt-ce`, or `longtail train --config run.toml`; "
                            "`longtail recipes` lists the recipes")
    if recipe is not None and recipe.pretrain:
        raise LongtailError(f"{recipe.name} is a pre-training recipe", f"run `longtail pretrain {recipe.name}`")
    _train(recipe, base, args, args.out or f"runs/{base.recipe}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .config import apply_overrides
    from .recipes import get_recipe
    from .tune import parse_grid, tune

    recipe = get_recipe(args.recipe)
    if recipe.pretrain or recipe.decouple:
        kind = "a pre-training recipe" if recipe.pretrain else f"a two-stage recipe (+ {recipe.decouple})"
        raise LongtailError(f"{recipe.name} is {kind}; tune trains one-stage recipes",
                            "tune its base recipe, then run `longtail decouple` / `longtail train --init-from` "
                            "on the chosen run")
    if args.stack_seeds != "off" or args.show_config:
        raise LongtailError("--stack-seeds and --show-config do not apply to tune",
                            "leave them out (`longtail train RECIPE --show-config` shows a recipe's settings)")
    grid = parse_grid(args.grid)
    ov = overrides_from_args(args)
    clash = sorted(set(grid) & set(ov))
    if clash:
        raise LongtailError(f"{', '.join(clash)} is both in --grid and set by another option",
                            "give it in one place: its values in --grid")
    cfg = apply_overrides(recipe.config, ov)
    if recipe.needs_pretrained and not cfg.model.pretrained and not cfg.train.init_from:
        raise LongtailError(f"{recipe.name} starts from pre-trained weights, and none were given",
                            "pass --set model.pretrained=FILE, a local weights file; longtail downloads nothing")
    out = args.out or f"runs/tune-{cfg.recipe}"
    t0 = time.perf_counter()
    summary = tune(cfg, grid, out, by=args.by, seeds=args.seeds, progress=False if args.quiet else None,
                   command=sys.argv, restart=args.restart)
    if _rank() != 0:
        return 0
    print()
    print((Path(out) / "tune.md").read_text())
    print(f"tuning folder: {out}  ({time.perf_counter() - t0:.1f} s)")
    return 0 if summary else 1


def show_config(cfg: Any, *, pretrain: bool | str = False) -> str:
    """What ``--show-config`` prints: the configuration as TOML, led by the schedule in the run's own epochs;
    the settings of methods the run does not use are left out while they keep their defaults."""
    from .config import config_to_toml, unused_settings
    from .recipes import RECIPES
    from .schedule import describe_schedule

    # a file read back starts from the recipe it names (config_from_file): only what that recipe leaves at the
    # defaults may be left out
    start = RECIPES[cfg.recipe].config if cfg.recipe in RECIPES else None
    unused = unused_settings(cfg, pretrain=pretrain, start=start)
    run_it = "; change it with --set" if pretrain else "; run it with `longtail train --config FILE`"
    head = [f"longtail configuration of {cfg.recipe}{run_it}", "", *describe_schedule(cfg), "",
            f"{len(unused)} settings of methods this run does not use are left out at their defaults (the ssl "
            "section outside pre-training, FixMatch's, GLMC's, ...); a file without them reads back the same", ""]
    return config_to_toml(cfg, comments=head, leave_out=unused)


def _single_process(command: str) -> None:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LongtailError(f"`longtail {command}` is one inference pass over the pool and runs in one process",
                            f"run `longtail {command}` without torchrun")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import apply_overrides
    from .recipes import get_recipe
    from .seeds import console_table
    from .ssl import METHODS, default_config, pretrain_run

    if args.method in METHODS:
        method, cfg = args.method, default_config(args.method, args.dataset or "cifar10")
    else:
        recipe = get_recipe(args.method)
        if not recipe.pretrain:
            raise LongtailError(f"{args.method} is not a pre-training recipe", f"run `longtail train {args.method}`")
        method, cfg = recipe.pretrain, recipe.config
        if args.dataset is not None and args.dataset != cfg.data.dataset:  # it was once ignored, silently
            raise LongtailError(f"--dataset {args.dataset} goes with a method name; the recipe {args.method} "
                                f"pre-trains on {cfg.data.dataset}",
                                f"run `longtail pretrain {method} --dataset {args.dataset}`, or the recipe without "
                                "--dataset")
    if args.seeds and len(args.seeds) > 1:
        raise LongtailError("pre-training takes one seed", "pass one --seeds value (or none)")
    ov = overrides_from_args(args)
    if args.seeds:
        ov["seed"] = args.seeds[0]
    cfg = apply_overrides(cfg, ov)
    if args.show_config:
        print(show_config(cfg, pretrain=method), end="")
        return 0
    out = args.out or f"runs/{cfg.recipe}"
    if args.restart:
        _check_restart(out)
    t0 = time.perf_counter()
    result = pretrain_run(method, cfg, out, progress=False if args.quiet else None, command=sys.argv,
                          restart=args.restart)
    if _rank() != 0:
        return 0
    print(console_table(f"{cfg.recipe} (linear probe)", result))
    print(f"\nrun folder: {out}  ({time.perf_counter() - t0:.1f} s)\nreport: {Path(out) / 'report.md'}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .recipes import get_recipe

    args.seeds, args.sets = None, []
    if args.data_root is None:
        if args.device is not None:
            raise LongtailError("quickstart on the built-in digits runs on the CPU; --device goes with --data-root",
                                "leave out --device, or pass --data-root DIR for CIFAR-10-LT")
        print("longtail quickstart: scikit-learn digits made long-tailed (140 images of the first digit down to 1 of "
              "the last), ResNet-8, cross-entropy, CPU")
        recipe = get_recipe("quickstart")
        _train(recipe, recipe.config, args, args.out or "runs/quickstart")
        if _rank() == 0:
            print("\nnext, a first result on real data: `longtail quickstart --data-root DIR` with CIFAR-10 in "
                  "DIR/cifar-10-batches-py (CIFAR-10-LT rho 100, about 9 minutes on 2 CPU cores)")
        return 0
    if Path(args.data_root).name == "cifar-10-batches-py" and Path(args.data_root).is_dir():
        args.data_root = str(Path(args.data_root).parent)  # the layout folder itself, as `train` takes it
    folder = Path(args.data_root) / "cifar-10-batches-py"
    if not folder.is_dir():
        raise LongtailError(f"no CIFAR-10 at {folder}",
                            "put the python version of CIFAR-10 (cifar-10-python.tar.gz, unpacked) there, "
                            "or run `longtail quickstart` without --data-root for the built-in digits")
    recipe = get_recipe("cifar10-lt-fast-la")
    print("longtail quickstart: CIFAR-10-LT rho 100 (5,000 images of the first class down to 50 of the last), "
          f"{recipe.name}: FastNet, the logit-adjusted loss, {recipe.config.train.epochs} epochs")
    args.no_download = True
    _train(recipe, recipe.config, args, args.out or "runs/quickstart-cifar10")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .experiment import evaluate_checkpoint
    from .seeds import console_table

    result = evaluate_checkpoint(args.run, device=args.device, data_root=args.data_root, tta=args.tta)
    title = result.get("recipe", "run") + ("" if args.tta is None else f" (model.tta={args.tta})")
    print(console_table(title, result))
    return 0


def cmd_decouple(args: argparse.Namespace) -> int:
    from .decouple import decouple_run
    from .report import summary_table

    r = decouple_run(args.run, args.method, out=args.out, epochs=args.epochs, tau=args.tau, device=args.device,
                     data_root=args.data_root, progress=False if args.quiet else None, command=sys.argv,
                     restart=args.restart, bn=args.bn)
    print(summary_table([(f"{r['recipe']} (base)", r["base"]), (f"{r['recipe']} + {args.method}", r)]))
    if r.get("tau") is not None:
        print(f"tau = {r['tau']} ({r['tau_source']})")
    print(f"report: {Path(r['out']) / 'report.md'}")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from .semi.pseudo import pseudo_label_run

    _single_process("pseudo-label")

    pseudo_label_run(args.run, args.pool, args.out, threshold=args.threshold, device=args.device,
                     data_root=args.data_root)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import write_comparison

    if args.names and len(args.names) != len(args.runs):
        raise LongtailError(f"{len(args.names)} names for {len(args.runs)} runs", "give one --names entry per run")
    text = write_comparison(args.runs, Path(args.out), names=args.names)
    print(text)
    print(f"written: {Path(args.out) / 'comparison.md'} and comparison.png")
    return 0


COMMANDS = {"quickstart": cmd_quickstart, "pretrain": cmd_pretrain, "recipes": cmd_recipes, "train": cmd_train,
            "evaluate": cmd_evaluate, "decouple": cmd_decouple, "compare": cmd_compare, "tune": cmd_tune,
            "pseudo-label": cmd_pseudo_label}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LongtailError as e:
        print(f"longtail: error: {e.problem}", file=sys.stderr)
        if e.fix:
            print(f"  fix: {e.fix}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `longtail ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\nlongtail: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
