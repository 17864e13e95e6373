"""``resnets train``: train, fine-tune or resume a model (see :mod:`resnets.train`)."""

from __future__ import annotations

import argparse
import sys

from ..data.policy import POLICIES
from ..data.sampling import SAMPLERS
from ..train.config import AUGMENT_PRESETS, FLIPS, OPTIMIZERS, PAD_MODES, SCHEDULES, parse_arg
from ..train.recipes import list_recipes, read_recipe, recipe_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train or fine-tune a model on an image data set",
                              description="Train, fine-tune (--weights, --freeze) or resume (--resume) "
                              "a model. Works unchanged under `torchrun --nproc-per-node N -m resnets train`; "
                              "--procs N starts N such processes itself.")
    p.add_argument("--config", metavar="RECIPE",
                   help="read flags from a YAML recipe (a file, or a shipped recipe: "
                        f"{', '.join(list_recipes())}); flags given here override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as a YAML recipe and exit")
    p.add_argument("--model", help="registered model name (default: the one --weights names)")
    p.add_argument("--data", help="image folder, zip, CIFAR pickle folder, LMDB, or a multi-label "
                   ".csv/.jsonl label file")
    p.add_argument("--out", default="runs/train", help="run directory (default: runs/train)")
    p.add_argument("--epochs", type=parse_arg("epochs"))
    p.add_argument("--batch-size", type=parse_arg("batch_size"), help="global batch size (split over processes)")
    p.add_argument("--lr", type=parse_arg("lr"), help="peak learning rate (default: SGD 0.1 x batch/256, AdamW 1e-3 x batch/1024)")
    p.add_argument("--head-lr", type=parse_arg("head_lr"), help="learning rate of the classifier (default: --lr)")
    p.add_argument("--weight-decay", type=parse_arg("weight_decay"), help="default: SGD 5e-4, AdamW 0.05 (none on norms/biases)")
    p.add_argument("--momentum", type=parse_arg("momentum"))
    p.add_argument("--opt", choices=OPTIMIZERS, help="sgd (Nesterov), adamw, or muon: torch's Muon on the "
                   "convolution filters, SGD-Nesterov on the rest")
    p.add_argument("--sched", choices=SCHEDULES)
    p.add_argument("--warmup-epochs", type=parse_arg("warmup_epochs"))
    p.add_argument("--label-smoothing", type=parse_arg("label_smoothing"))
    p.add_argument("--mixup", type=parse_arg("mixup"), metavar="ALPHA", help="MixUp Beta alpha (0: off)")
    p.add_argument("--cutmix", type=parse_arg("cutmix"), metavar="ALPHA", help="CutMix Beta alpha (0: off)")
    p.add_argument("--ema", type=parse_arg("ema"), nargs="?", const=0.999, metavar="DECAY",
                   help="keep an EMA of the weights (decay 0.999 if no value), evaluated and saved")
    p.add_argument("--accum-steps", type=parse_arg("accum_steps"), help="gradient accumulation steps")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--img-size", type=parse_arg("img_size"), help="input size (default: the model's)")
    p.add_argument("--in-chans", type=parse_arg("in_chans"), metavar="N",
                   help="input channels: 1 trains a gray model (images fed as their luma); RGB --weights "
                        "are adapted (first convolution summed), as timm does")
    p.add_argument("--progressive-resize", type=parse_arg("progressive_resize"), metavar="SCALE",
                   help="progressive resizing: start at SCALE x --img-size and grow to full size (1: off)")
    p.add_argument("--progressive-delay", type=parse_arg("progressive_delay"), metavar="FRACTION",
                   help="fraction of the epochs held at the initial scale (default %(default)s)")
    p.add_argument("--progressive-finetune", type=parse_arg("progressive_finetune"), metavar="FRACTION",
                   help="fraction of the epochs at full size, at the end (default %(default)s)")
    p.add_argument("--augment", choices=AUGMENT_PRESETS, help="augmentation preset (default: the model's)")
    _add_imbalance_and_policy_arguments(p)
    _add_fast_training_arguments(p)
    p.add_argument("--val-split", type=parse_arg("val_split"), help="hold out this fraction when the data has no val/test split")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction,
                   help="decode images from disk every epoch in --workers processes instead of once into "
                        "memory (default: stream only when the decoded set would exceed 4 GiB)")
    p.add_argument("--multi-label", action="store_true",
                   help="several labels per image: sigmoid outputs and BCE loss, mAP/F1 instead of accuracy "
                        "(implied by a .csv/.jsonl label file as --data)")
    p.add_argument("--num-classes", type=parse_arg("num_classes"), help="check the data has this many classes")
    p.add_argument("--weights", help="start from a run directory, a weights file of any format, or a pretrained tag "
                   "of --model (imagenet, IMAGENET1K_V2); a new head if the classes differ")
    p.add_argument("--freeze", help="'backbone' or a comma list of stem,layer1,...,layer4")
    p.add_argument("--unfreeze-after", type=parse_arg("unfreeze_after"), metavar="N", help="unfreeze everything after N epochs")
    p.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="with --freeze backbone, run the frozen backbone every step instead of caching features")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    p.add_argument("--procs", type=parse_arg("procs"), metavar="N",
                   help="train in N data-parallel processes on this machine (DDP, as under torchrun; on a CPU "
                        "each gets its share of the threads, which can beat one process for small models)")
    p.add_argument("--max-minutes", type=parse_arg("max_minutes"), metavar="M",
                   help="stop (resumable) before an epoch that would end more than M minutes after the start")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (its settings are kept)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --out folder that holds an older run (its files are deleted once "
                        "the new run's first checkpoint is written); without it such a folder is refused")
    p.add_argument("--val-every", type=parse_arg("val_every"), metavar="N", help="validate every N epochs and after the last")
    p.add_argument("--stop-after", type=parse_arg("stop_after"), metavar="N", help="stop after N epochs of this session (resumable)")
    p.add_argument("--seed", type=parse_arg("seed"))
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=parse_arg("workers"), help="image decoding threads (processes with --stream)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(handler=lambda args: run(args, p), **_config_defaults(p))
    _apply_recipe_first(p)


def _add_imbalance_and_policy_arguments(p: argparse.ArgumentParser) -> None:
    """Imbalanced classes (loss weights, balanced sampling) and per-image augmentation policies."""
    p.add_argument("--augment-policy", choices=POLICIES,
                   help="torchvision v2 policy per image, before the preset's crop and flip")
    p.add_argument("--random-erasing", type=parse_arg("random_erasing"), metavar="P",
                   help="RandomErasing with probability P per image (0: off)")
    p.add_argument("--color-jitter", type=parse_arg("color_jitter"), metavar="S",
                   help="ColorJitter of brightness, contrast and saturation by S (0: off)")
    p.add_argument("--aug-repeats", type=parse_arg("aug_repeats"), metavar="N",
                   help="repeated augmentation: each image N times per epoch, differently augmented")
    p.add_argument("--class-weights", metavar="auto|effective|FILE",
                   help="weigh the loss per class: auto (inverse frequency), effective (Cui et al., "
                        "--effective-beta) or a JSON file {class: weight}")
    p.add_argument("--effective-beta", type=parse_arg("effective_beta"), metavar="BETA",
                   help="beta of --class-weights effective (default %(default)s)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="shuffle (default) or balanced: every class drawn equally often each epoch")


def _add_fast_training_arguments(p: argparse.ArgumentParser) -> None:
    """The fast-training techniques of Page's ResNet-9 and Jordan's airbench (recipe cifar10-resnet9-fast)."""
    p.add_argument("--flip", choices=FLIPS,
                   help="horizontal flips: random (default), alternate (each image flipped in every other "
                        "epoch; airbench) or none")
    p.add_argument("--translate", type=parse_arg("translate"), metavar="PX",
                   help="pad by PX pixels before the random crop (default: the preset's 4)")
    p.add_argument("--pad-mode", choices=PAD_MODES, help="fill that padding with zeros (constant) or reflect")
    p.add_argument("--patch-whitening", action=argparse.BooleanOptionalAction,
                   help="initialise the first convolution to whiten the training images' patches (Page; airbench)")
    p.add_argument("--norm-bias-lr-scale", type=parse_arg("norm_bias_lr_scale"), metavar="X",
                   help="BatchNorm biases train at X times the learning rate (Page: 64; default 1)")


def _apply_recipe_first(parser: argparse.ArgumentParser) -> None:
    """Parse twice when --config is given: first to find the recipe, whose settings then become
    the parser's defaults, so that the flags on the command line (wherever they stand) win."""
    parse_once = parser.parse_known_args

    def parse_with_recipe(args=None, namespace=None):  # noqa: ANN001, ANN202 (argparse's signature)
        first, _ = parse_once(args, argparse.Namespace(**vars(namespace)) if namespace else None)
        if first.config:
            parser.set_defaults(**read_recipe(first.config, parser))
        return parse_once(args, namespace)

    parser.parse_known_args = parse_with_recipe  # what the top-level parser calls for this command


def _config_defaults(parser: argparse.ArgumentParser) -> dict:
    """Every option's default is TrainConfig's: stated once, in the dataclass the API uses too."""
    from dataclasses import MISSING, fields

    from ..train.config import TrainConfig

    options = {action.dest for action in parser._actions}
    return {f.name: f.default for f in fields(TrainConfig) if f.name in options and f.default is not MISSING}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..train import TrainConfig, train

    options = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "stop_after", "overwrite")}
    config = TrainConfig.from_dict(options)  # checked before printing: a printed recipe runs
    if args.print_config:
        sys.stdout.write(recipe_yaml(vars(args), parser))
        return 0
    result = train(config, stop_after=args.stop_after, overwrite=args.overwrite)
    score = "mAP" if result.history and "val_map" in result.history[-1] else "top-1"
    best = f", best val {score} {result.best_top1:.2f}%" if result.best_top1 is not None else ""
    cached = " (head trained on cached features)" if result.used_feature_cache else ""
    print(f"trained {len(result.history)} epoch(s){cached}{best}; weights: {result.weights}", file=sys.stderr)
    return 0
