"""The image-space recipe on a GPU machine that has PyTorch but no TensorFlow.

``hiercell train --gpu-recipe`` needs TensorFlow on the GPU machine. Where that
machine offers PyTorch instead, the network part of each stage (block5 + the
dense head, VGG16 blocks 1-4 frozen with ImageNet's weights) trains there on
augmented views drawn on the fly, and the rest of the model (SVMs, review
scorer, source sample, lab reference) is fit here, on the trunk features of
the original images, exactly as ``hiercell train`` fits it:

    # here: canonical frames of the train and val images (WebP, 224 px), the
    # labels of both stages, the ImageNet VGG16 weights (float16)
    python tools/torch_recipe.py pack ../shared/data/pbc --out .gpujob --max-mb 34
    # on the GPU machine (needs torch, numpy, opencv; hiercell's augment/framing
    # modules are imported from the checkout): per stage and input size, the
    # block5 + head weights of the epoch with the best validation loss
    python tools/torch_recipe.py train .gpujob --out heads --sizes 224,160 --minutes 7
    # here again: the bundle, evaluated on the test split
    python tools/torch_recipe.py bundle ../shared/data/pbc heads/s1-224.npz \
        heads/s2-224.npz --out runs/gpu224 --backbone-weights .../vgg16_..._notop.h5

Experiments: ``pack --external NAME=DATA`` (repeatable) adds another lab's labelled set,
never trained on, on which ``train`` scores each stage-1 network's own softmax;
``train --first-trained 4`` fine-tunes from block4 on (its head is scored and its
history kept; it does not fit the bundle's shared trunk, so ``bundle`` refuses it: its
block4 weights are written apart, to ``s{stage}-{size}-deeper.npz``, for experiments).
Each stage-1 network is scored on the external sets as it is and aligned to each set
(:class:`hiercell.alignment.LabAlignment`, the class mix estimated by the network's own
softmax); ``score JOB
HEAD...`` scores heads trained earlier (``train``'s files or a bundle's
``stage1/head.npz``) the same way. ``train --randconv P`` convolves a share P of the
training batches with random filters (:func:`random_convolutions`, RandConv), ``train
--statistics dsu|mixstyle`` perturbs the trunk maps' per-cell channel statistics
(:func:`perturb_statistics`); docs/model.md has what each did.

Views: every training image is stored once in its canonical frame
(:func:`hiercell.framing.canonical_view` at 224 px, white-balanced), so the
frame of a stored image is the identity and :func:`hiercell.augment.random_view`
draws the same augmentations as on the original (scale, crop, rotation, stain,
optics, JPEG). A share ``--clean`` of the steps sees the clean frame with a
random flip and quarter turn.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

#: The checkout this script belongs to: ``train`` runs on a machine without hiercell
#: installed and imports its augment and framing modules (in the data workers too, which
#: re-run this module when spawned) from here, so its command needs no PYTHONPATH. Loading
#: the script as a module (the tests do) leaves the checkout first on ``sys.path``.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))

STORED = 224  # side of the stored canonical frames
MEAN_BGR = (103.939, 116.779, 123.68)  # VGG16 (Keras "caffe") input: BGR minus ImageNet mean
BLOCKS = (2, 2, 3, 3, 3)  # convolutions in VGG16's blocks 1-5


# --------------------------------------------------------------------------- pack (here)


def _frame_one(path):
    """(webp-ready BGR uint8 canonical frame at STORED px, whether a cell was found), or
    (None, why) for an image that cannot be read or framed."""
    import cv2

    from hiercell.framing import canonical_view, locate_cell
    from hiercell.io import try_load_image

    rgb, why = try_load_image(path)
    if rgb is None:
        return None, why
    try:
        framing = locate_cell(rgb)
    except ValueError as exc:  # read, but not a usable image (e.g. too small)
        return None, str(exc)
    frame = canonical_view(rgb, STORED, framing)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), bool(np.isfinite(framing.diameter))


def pack(data, out, max_mb, val_share, seed, weights, others_per_class=150, externals=()):
    """Write ``out/manifest.csv``, ``out/frames.bin`` (the WebP files one after another;
    the manifest gives offset and length) and ``out/vgg16.npz``.

    ``externals``: ``(name, data)`` pairs of other labs' labelled sets, packed with split
    ``external:NAME`` and their stage-1 labels; ``train`` scores each stage-1 network on
    them (never trained on)."""
    from dataclasses import replace
    from multiprocessing import Pool

    import cv2

    from hiercell.backbone import build_vgg16, resolve_weights
    from hiercell.data import load_samples
    from hiercell.training import stage_targets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(data)
    labels = {1: {}, 2: {}}
    for stage in (1, 2):
        idx, y = stage_targets(samples, stage, others_per_class, seed)
        labels[stage] = dict(zip(idx.tolist(), y.tolist()))
    rng = np.random.default_rng(seed)
    keep = [i for i, s in enumerate(samples) if s.split == "train" and i in labels[1]]
    val = [i for i, s in enumerate(samples) if s.split == "val" and i in labels[1]]
    keep += sorted(rng.permutation(val)[:int(round(val_share * len(val)))].tolist())
    for name, path in externals:
        try:
            extra = [s for s in load_samples(path) if s.main is not None]
        except (OSError, ValueError) as exc:
            sys.exit(f"error: --external {name}={path}: {exc}")
        if not extra:
            sys.exit(f"error: --external {name}={path}: no image with a main-class label")
        first = len(samples)
        samples += [replace(s, split=f"external:{name}") for s in extra]
        labels[1].update({first + k: s.main for k, s in enumerate(extra)})
        keep += range(first, first + len(extra))
    with Pool(2) as pool:
        frames = pool.map(_frame_one, [str(samples[i].path) for i in keep], chunksize=64)
    for i, (frame, why) in zip(keep, frames):  # a bad file is left out, not the job
        if frame is None:
            print(f"skipped {samples[i].path}: {why}", file=sys.stderr)
    keep, frames = zip(*[(i, f) for i, f in zip(keep, frames) if f[0] is not None])
    vgg = build_vgg16(STORED, resolve_weights(weights))
    convs = [layer for layer in vgg.layers if layer.name.startswith("block") and "conv" in layer.name]
    arrays = {f"{layer.name}/{k}": w.astype(np.float16)
              for layer in convs for k, w in zip(("kernel", "bias"), layer.get_weights())}
    np.savez(out / "vgg16.npz", **arrays)
    budget = max_mb * 1e6 - (out / "vgg16.npz").stat().st_size
    for quality in (80, 75, 70, 65, 60, 55, 50):
        blobs = [cv2.imencode(".webp", f, [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes()
                 for f, _ in frames]
        total = sum(map(len, blobs))
        if total <= budget:
            break
    print(f"{len(blobs)} frames, WebP quality {quality}: {total / 1e6:.1f} MB "
          f"(+ weights {(out / 'vgg16.npz').stat().st_size / 1e6:.1f} MB)")
    (out / "frames.bin").write_bytes(b"".join(blobs))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "offset", "length", "split", "stage1", "stage2", "has_cell"])
        for n, (i, (_, has_cell)) in enumerate(zip(keep, frames)):
            w.writerow([f"{n:05d}", offsets[n], len(blobs[n]), samples[i].split, labels[1][i],
                        labels[2].get(i, ""), int(has_cell)])


# --------------------------------------------------------------------------- train (GPU)


class FrameViews:
    """Training views of stored frames: ``dataset[(i, seed)]`` -> (uint8 HWC view, label)."""

    def __init__(self, blobs, labels, has_cell, size, augment, clean_share):
        self.blobs, self.labels, self.has_cell = blobs, labels, has_cell
        self.size, self.augment, self.clean_share = size, augment, clean_share

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, key):
        import cv2

        from hiercell.augment import random_view
        from hiercell.framing import REFERENCE_BACKGROUND, Framing, canonical_view

        i, seed = key
        rgb = cv2.cvtColor(cv2.imdecode(self.blobs[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        c = (STORED - 1) / 2.0
        framing = Framing((c, c), 0.4 * STORED if self.has_cell[i] else float("nan"),
                          REFERENCE_BACKGROUND)
        rng = np.random.default_rng(seed)
        if self.augment and rng.random() >= self.clean_share:
            view = random_view(rgb, framing, self.size, rng, target_diameter=0.4,
                               zoom_range=(0.35, 3.0))
        else:
            view = canonical_view(rgb, self.size, framing)
            if self.augment:
                view = np.rot90(view[:, ::-1] if rng.random() < 0.5 else view, rng.integers(4))
        return np.ascontiguousarray(view), int(self.labels[i])


class EpochBatches:
    """Batches of ``(index, seed)`` keys, drawn anew each epoch (``.epoch`` is set by the
    training loop; the sampler runs in the main process, so persistent workers see it)."""

    def __init__(self, n, batch_size, seed, shuffle):
        self.n, self.batch_size, self.seed, self.shuffle, self.epoch = n, batch_size, seed, shuffle, 0

    def __len__(self):
        return -(-self.n // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        keys = rng.integers(0, 2**31, size=self.n)
        for k in range(0, self.n, self.batch_size):
            yield [(int(i), int(keys[i])) for i in order[k:k + self.batch_size]]


def perturb_statistics(maps, kind, generator):
    """Training-time style augmentation of trunk maps ``(n, c, h, w)`` (float): each cell's
    channel means and standard deviations are replaced, by draws around them with the
    batch's spread of each statistic (``"dsu"``, Li et al. 2022) or by a mix with another
    cell's of the batch (``"mixstyle"``, Beta(0.1, 0.1) weights, Zhou et al. 2021). The
    lab alignment shifts the same maps' channel means at prediction."""
    import torch

    eps = 1e-6
    maps = maps.float()
    mu = maps.mean((2, 3), keepdim=True)
    sigma = (maps.var((2, 3), keepdim=True) + eps).sqrt()
    normed = (maps - mu) / sigma
    if kind == "dsu":
        noise = lambda t: torch.randn(t.shape, generator=generator).to(t.device)  # noqa: E731
        new_mu = mu + noise(mu) * (mu.var(0, keepdim=True) + eps).sqrt()
        new_sigma = sigma + noise(sigma) * (sigma.var(0, keepdim=True) + eps).sqrt()
    elif kind == "mixstyle":
        n = len(maps)
        lam = torch.from_numpy(np.random.default_rng(
            int(torch.randint(2**31, (1,), generator=generator))).beta(0.1, 0.1, (n, 1, 1, 1))
        ).float().to(maps.device)
        other = torch.randperm(n, generator=generator).to(maps.device)
        new_mu = lam * mu + (1 - lam) * mu[other]
        new_sigma = lam * sigma + (1 - lam) * sigma[other]
    else:
        raise ValueError(f"unknown statistics perturbation {kind!r}")
    return normed * new_sigma.clamp(min=eps) + new_mu


def random_convolutions(x, generator):
    """Images ``(n, 3, h, w)`` (float, VGG16's input scale), each convolved with a random
    filter of its own (size 1, 3, 5 or 7, He-normal weights) and mixed with itself at a
    random share (RandConv, Xu et al. 2021): random colour mixing at size 1, random
    texture beyond."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    k = (1, 3, 5, 7)[int(torch.randint(4, (1,), generator=generator))]
    w = (torch.randn((3 * n, 3, k, k), generator=generator) / np.sqrt(3 * k * k)).to(x.device)
    out = F.conv2d(x.reshape(1, 3 * n, *x.shape[2:]), w, padding=k // 2, groups=n)
    alpha = torch.rand((n, 1, 1, 1), generator=generator).to(x.device)
    return alpha * x + (1 - alpha) * out.reshape(x.shape)


def _networks(weights, n_classes, dropout, first_trained=5):
    """(frozen trunk, trainable head) as torch modules, from the Keras-layout weights: the
    trunk is VGG16's blocks before ``first_trained`` (ImageNet's weights, frozen), the head
    the blocks from it on, global average pooling and the dense layers."""
    import torch
    from torch import nn

    def conv(name):
        layer = nn.Conv2d(weights[f"{name}/kernel"].shape[2], weights[f"{name}/kernel"].shape[3],
                          3, padding=1)
        layer.weight.data = torch.from_numpy(
            weights[f"{name}/kernel"].astype(np.float32).transpose(3, 2, 0, 1).copy())
        layer.bias.data = torch.from_numpy(weights[f"{name}/bias"].astype(np.float32))
        return [layer, nn.ReLU(inplace=True)]

    trunk, convs = [], []
    for block, n_convs in enumerate(BLOCKS, 1):
        layers = [m for k in range(1, n_convs + 1) for m in conv(f"block{block}_conv{k}")]
        (trunk if block < first_trained else convs).extend(layers + [nn.MaxPool2d(2)])
    dense = []
    for n_in, n_out in ((512, 1024), (1024, 512)):
        layer = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(layer.weight)  # Keras' glorot_uniform, zero bias
        nn.init.zeros_(layer.bias)
        dense += [layer, nn.ReLU(inplace=True), nn.Dropout(dropout)]
    top = nn.Linear(512, n_classes)
    nn.init.xavier_uniform_(top.weight)
    nn.init.zeros_(top.bias)
    head = nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *dense, top)
    trunk = nn.Sequential(*trunk).eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return trunk, head


def keras_order(head) -> list:
    """The head's weights as :func:`hiercell.backbone.build_head` lists them (float32)."""
    from torch import nn

    out = []
    for m in head:
        if isinstance(m, nn.Conv2d):
            out += [m.weight.detach().float().cpu().numpy().transpose(2, 3, 1, 0), m.bias]
        elif isinstance(m, nn.Linear):
            out += [m.weight.detach().float().cpu().numpy().T, m.bias]
    return [np.ascontiguousarray(w if isinstance(w, np.ndarray) else
                                 w.detach().float().cpu().numpy()) for w in out]


def trunk_pass(trunk, dev, amp):
    """Frames (uint8 NHWC, RGB) -> the frozen trunk's maps ``(n, c, h, w)`` on ``dev``
    (VGG16's input: BGR minus the ImageNet mean)."""
    import torch

    mean = torch.tensor(MEAN_BGR, device=dev).view(1, 3, 1, 1)

    def run(x, transform=None):
        x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().flip(1) - mean
        if transform is not None:
            x = transform(x)
        with torch.no_grad(), torch.autocast(**amp):
            return trunk(x.contiguous(memory_format=torch.channels_last))

    return run


def load_keras_order(head, weights) -> None:
    """Set the head's weights from :func:`keras_order`'s list (the inverse)."""
    import torch
    from torch import nn

    layers = [m for m in head if isinstance(m, (nn.Conv2d, nn.Linear))]
    if len(weights) != 2 * len(layers):
        raise ValueError(f"{len(weights)} weight arrays for a head of {len(layers)} layers")
    for m, kernel, bias in zip(layers, weights[::2], weights[1::2]):
        kernel = np.asarray(kernel, np.float32)
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        if tuple(m.weight.shape) != kernel.shape:
            raise ValueError(f"a kernel of shape {kernel.shape} for a layer of {tuple(m.weight.shape)}")
        m.weight.data = torch.from_numpy(np.ascontiguousarray(kernel))
        m.bias.data = torch.from_numpy(np.asarray(bias, np.float32))


def deeper_split(weights, first_trained):
    """``(deeper, rest)`` of a head's Keras-order weights: the kernels and biases of the
    blocks before block5 that ``first_trained`` fine-tuned (none for 5; block4's for 4;
    block3's and block4's for 3), and the block5 + dense rest, the layout ``bundle``
    reads."""
    n = 2 * sum(BLOCKS[first_trained - 1:4])
    return list(weights[:n]), list(weights[n:])


def train_one(job, stage, size, budget_s, out, args, log):
    """Train one stage's head at ``size`` px for at most ``budget_s`` seconds; write
    ``out/s{stage}-{size}.npz`` (float16 weights in Keras order, classes, history)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    t_start = time.time()
    rows = [r for r in job["rows"] if r[f"stage{stage}"]]
    classes = sorted({r[f"stage{stage}"] for r in rows if r["split"] in ("train", "val")})
    index = {c: k for k, c in enumerate(classes)}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = {}
    for split in ("train", "val"):
        rs = [r for r in rows if r["split"] == split]
        sets[split] = FrameViews([job["blobs"][r["file"]] for r in rs],
                                 np.array([index[r[f"stage{stage}"]] for r in rs]),
                                 np.array([r["has_cell"] == "1" for r in rs]), size,
                                 augment=(split == "train"), clean_share=args.clean[stage - 1])
    y_train = sets["train"].labels
    counts = np.bincount(y_train, minlength=len(classes))
    class_w = torch.tensor(len(y_train) / (len(classes) * np.maximum(counts, 1)),
                           dtype=torch.float32, device=dev)
    trunk, head = _networks(job["weights"], len(classes), args.dropout, args.first_trained)
    n_conv_tensors = 2 * sum(BLOCKS[args.first_trained - 1:])
    trunk, head = trunk.to(dev, memory_format=torch.channels_last), head.to(dev)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    frames_to_maps = trunk_pass(trunk, dev, amp)

    samplers = {split: EpochBatches(len(ds), args.batch_size, args.seed, split == "train")
                for split, ds in sets.items()}
    loaders = {split: DataLoader(ds, batch_sampler=samplers[split], num_workers=args.workers,
                                 pin_memory=dev.type == "cuda", persistent_workers=bool(args.workers),
                                 prefetch_factor=4 if args.workers else None,
                                 worker_init_fn=_quiet_worker)
               for split, ds in sets.items()}

    def loader(split, epoch):
        samplers[split].epoch = epoch
        return loaders[split]

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    def inputs(x, train=False):
        """Frames (uint8 NHWC) -> frozen-trunk maps; in training with --randconv's and
        --statistics' augmentations (each on a batch with its probability)."""
        convolve = (train and args.randconv
                    and torch.rand(1, generator=generator) < args.randconv)
        maps = frames_to_maps(x, (lambda im: random_convolutions(im, generator))
                              if convolve else None)
        if (train and args.statistics != "none"
                and torch.rand(1, generator=generator) < args.statistics_p):
            maps = perturb_statistics(maps, args.statistics, generator)
        return maps

    val_batches = [(inputs(x), y.to(dev)) for x, y in loader("val", 0)]  # fixed: trunk once
    del loaders["val"]

    def validate():
        head.eval()
        loss = correct = n = 0
        with torch.no_grad(), torch.autocast(**amp):
            for f, y in val_batches:
                logits = head(f).float()
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                n += len(y)
        head.train()
        return loss / n, correct / n

    history, best, best_state, epoch, stale = [], np.inf, None, 0, 0
    phases = [("head", args.head_epochs, args.head_lr, False),
              ("finetune", args.finetune_epochs, args.finetune_lr, True)]
    for phase, epochs, lr, tune_convs in phases:
        for k, p in enumerate(head.parameters()):
            p.requires_grad_(tune_convs or k >= n_conv_tensors)  # the head's convolutions first
        opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr, eps=1e-7)
        stale = 0
        for _ in range(epochs):
            t0 = time.time()
            if history and time.time() - t_start + history[-1]["seconds"] > budget_s:
                break
            head.train()
            tot = correct = n = 0
            for x, y in loader("train", epoch):
                y = y.to(dev, non_blocking=True)
                f = inputs(x, train=True)
                with torch.autocast(**amp):
                    logits = head(f).float()
                loss = (F.cross_entropy(logits, y, reduction="none") * class_w[y]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                n += len(y)
            val_loss, val_acc = validate()
            epoch += 1
            history.append(dict(phase=phase, epoch=epoch, loss=tot / n, accuracy=correct / n,
                                val_loss=val_loss, val_accuracy=val_acc,
                                seconds=round(time.time() - t0, 1)))
            log(f"s{stage}-{size} {phase} epoch {epoch}: loss {tot / n:.4f} acc {correct / n:.4f}"
                f" val_loss {val_loss:.4f} val_acc {val_acc:.4f} ({time.time() - t0:.1f} s, "
                f"{n / (time.time() - t0):.0f} img/s)")
            if val_loss < best:
                best, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            else:
                stale += 1
                if stale >= args.patience:
                    break
                if args.plateau and stale % args.plateau == 0:  # reduce on plateau
                    for group in opt.param_groups:
                        group["lr"] *= args.plateau_factor
    head.load_state_dict(best_state)
    externals = score_externals(head, job, rows, size, inputs, amp, classes, args, val_batches,
                                log, f"s{stage}-{size}")
    # a head trained deeper than block5 does not fit the bundle's shared trunk (bundle
    # refuses it): its block5 + dense weights go to the usual file, the deeper blocks'
    # (block4, and block3 with --first-trained 3) to s{stage}-{size}-deeper.npz, for
    # experiments here (two files: each under the device's 16 MiB per returned file)
    deeper, rest = deeper_split(keras_order(head), args.first_trained)
    settings = json.dumps({"size": size, "stage": stage, **vars(args)}, default=str)
    arrays = {f"w{k:02d}": w.astype(np.float16) for k, w in enumerate(rest)}
    if deeper:
        np.savez_compressed(Path(out) / f"s{stage}-{size}-deeper.npz", settings=settings,
                            **{f"w{k:02d}": w.astype(np.float16) for k, w in enumerate(deeper)})
    path = Path(out) / f"s{stage}-{size}.npz"
    np.savez_compressed(path, classes=np.array(classes), history=json.dumps(history),
                        externals=json.dumps(externals), settings=settings, **arrays)
    log(f"s{stage}-{size}: best val_loss {best:.4f} -> {path} ({time.time() - t_start:.0f} s)")


def frame_set(job, rows, size, index):
    """The frames of ``rows`` (unaugmented) labelled by their stage-1 class index."""
    return FrameViews([job["blobs"][r["file"]] for r in rows],
                      np.array([index[r["stage1"]] for r in rows]),
                      np.array([r["has_cell"] == "1" for r in rows]), size, False, 1.0)


def trunk_maps(dataset, inputs, args):
    """``(maps, labels)``: a frame set's frozen-trunk maps ``(n, c, h, w)`` on the device and
    its labels (numpy), in order."""
    import torch
    from torch.utils.data import DataLoader

    maps, labels = [], []
    for x, y in DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                           worker_init_fn=_quiet_worker,
                           sampler=[(i, 0) for i in range(len(dataset))]):
        maps.append(inputs(x))
        labels.append(y.numpy())
    return torch.cat(maps), np.concatenate(labels)


def network_proba(head, maps, amp, batch=256):
    """The head's softmax ``(n, k)`` (float32, on the device) on trunk maps."""
    import torch

    head.eval()
    out = []
    with torch.no_grad(), torch.autocast(**amp):
        for k in range(0, len(maps), batch):
            out.append(torch.softmax(head(maps[k:k + batch]).float(), 1))
    return torch.cat(out)


def summarise(predicted, truth, classes) -> dict:
    """Accuracy, recall per class and the confusions of each class (numpy class indices)."""
    per_class = {classes[c]: round(float((predicted[truth == c] == c).mean()), 3)
                 for c in np.unique(truth)}
    confusions = {classes[c]: {classes[d]: int(((truth == c) & (predicted == d)).sum())
                               for d in np.unique(predicted[truth == c]) if d != c}
                  for c in np.unique(truth)}
    return {"n": int(len(truth)), "accuracy": float((predicted == truth).mean()),
            "per_class": per_class, "confusions": confusions}


def score_externals(head, job, rows, size, inputs, amp, classes, args, val_batches, log,
                    tag) -> dict:
    """The network's own (softmax) stage-1 figures on each packed external set, as it is
    and aligned to the set (:class:`hiercell.alignment.LabAlignment`, the training lab's
    means taken on the packed validation frames, the class mix estimated by the network's
    softmax instead of the SVM's): ``{name: {..., "aligned": {...}}}``, logged."""
    import torch

    from hiercell.alignment import LabAlignment

    def nhwc(maps):
        return maps.float().permute(0, 2, 3, 1).cpu().numpy()

    def proba(maps_nhwc):
        maps = torch.from_numpy(np.ascontiguousarray(maps_nhwc.transpose(0, 3, 1, 2)))
        return network_proba(head, maps.to(device), amp)

    val_maps = torch.cat([f for f, _ in val_batches])
    device = val_maps.device
    val_y = torch.cat([y for _, y in val_batches]).cpu().numpy()
    reference = LabAlignment.from_training(nhwc(val_maps), np.arange(len(val_y)),
                                           np.array(classes)[val_y])
    order = [classes.index(c) for c in reference.classes]
    index = {c: k for k, c in enumerate(classes)}
    out = {}
    for name in sorted({r["split"] for r in rows if r["split"].startswith("external:")}):
        rs = [r for r in rows if r["split"] == name and r["stage1"] in index]
        maps, truth = trunk_maps(frame_set(job, rs, size, index), inputs, args)
        maps = nhwc(maps)
        plain = proba(maps).argmax(1).cpu().numpy()
        shifted = reference.unfitted().fit(
            maps, lambda m: proba(m)[:, order].cpu().numpy()).transform(maps)
        aligned = proba(shifted).argmax(1).cpu().numpy()
        out[name] = {**summarise(plain, truth, classes),
                     "aligned": summarise(aligned, truth, classes)}
        log(f"{tag} {name}: accuracy {out[name]['accuracy']:.3f}, aligned "
            f"{out[name]['aligned']['accuracy']:.3f} (n {out[name]['n']}; per class "
            f"{out[name]['per_class']}; aligned {out[name]['aligned']['per_class']})")
    return out


def score(args):
    """Score stage-1 heads trained elsewhere (``train``'s ``s1-SIZE.npz``, or a bundle's
    ``stage1/head.npz`` with ``--classes``) on the job's external sets, as ``train`` does."""
    import torch

    job, log = _open_job(args)
    rows = [r for r in job["rows"] if r["stage1"]]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    for path in args.heads:
        try:
            z = np.load(path)
            classes = ([str(c) for c in z["classes"]] if "classes" in z.files
                       else sorted(args.classes.split(",")))
            trunk, head = _networks(job["weights"], len(classes), args.dropout)
            load_keras_order(head, [z[k] for k in sorted(z.files) if k[0] == "w"])
        except (OSError, ValueError, KeyError) as exc:
            sys.exit(f"error: {path}: not a stage-1 head in Keras order (a file of 'train' or "
                     f"a bundle's stage1/head.npz) ({type(exc).__name__}: {exc})")
        index = {c: k for k, c in enumerate(classes)}
        trunk, head = trunk.to(dev, memory_format=torch.channels_last), head.to(dev).eval()
        inputs = trunk_pass(trunk, dev, amp)
        val = [r for r in rows if r["split"] == "val" and r["stage1"] in index]
        val_maps, val_y = trunk_maps(frame_set(job, val, args.size, index), inputs, args)
        val_batches = [(val_maps, torch.from_numpy(val_y).to(dev))]
        predicted = network_proba(head, val_maps, amp).argmax(1).cpu().numpy()
        log(f"{path}: val accuracy {(predicted == val_y).mean():.4f} (n {len(val_y)})")
        score_externals(head, job, rows, args.size, inputs, amp, classes, args, val_batches,
                        log, path)


def _quiet_worker(_):
    import cv2

    cv2.setNumThreads(1)


def _open_job(args):
    """``(job, log)``: a packed job (rows, VGG16 weights, frame blobs) and a function that
    prints a timed line and appends it to ``OUT/log.txt``."""
    import torch

    t0 = time.time()
    job = Path(args.job)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(job / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    frames = np.frombuffer((job / "frames.bin").read_bytes(), np.uint8)
    data = {"rows": rows, "weights": dict(np.load(job / "vgg16.npz")),
            "blobs": {r["file"]: frames[int(r["offset"]):int(r["offset"]) + int(r["length"])]
                      for r in rows}}
    logfile = open(Path(args.out) / "log.txt", "a")

    def log(msg):
        line = f"[{time.time() - t0:6.0f}s] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    log(f"{len(rows)} frames; device "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    return data, log


def train(args):
    import torch

    torch.backends.cudnn.benchmark = True
    t0 = time.time()
    data, log = _open_job(args)
    runs = [(int(s), int(z)) for z in args.sizes.split(",") for s in args.stages.split(",")]
    shares = [args.share[s - 1] * (1.0 if z == max(int(v) for v in args.sizes.split(",")) else 0.6)
              for s, z in runs]
    for k, (stage, size) in enumerate(runs):
        left = args.minutes * 60 - (time.time() - t0)
        budget = left * shares[k] / sum(shares[k:])
        if budget < 20:
            log(f"s{stage}-{size}: skipped, {left:.0f} s left")
            continue
        train_one(data, stage, size, budget, args.out, args, log)


# --------------------------------------------------------------------------- bundle (here)


def bundle(args):
    """Fit the rest of the model on the heads trained elsewhere and write the bundle."""
    from hiercell.data import load_samples
    from hiercell.training import TrainSettings, train_bundle

    heads = {}
    for path in args.heads:
        try:
            z = np.load(path)
            settings = json.loads(str(z["settings"]))
            if settings.get("first_trained", 5) != 5:
                sys.exit(f"error: {path}: trained from block {settings['first_trained']} on; "
                         "the bundle shares a frozen trunk through block 4, which its "
                         "block5 was not trained on")
            heads[settings["stage"]] = {
                "weights": [z[k].astype(np.float32) for k in sorted(z.files) if k[0] == "w"],
                "classes": [str(c) for c in z["classes"]],
                "history": json.loads(str(z["history"])),
                "size": settings["size"], "settings": settings}
        except (OSError, ValueError, KeyError) as exc:
            sys.exit(f"error: {path}: not a head file written by 'torch_recipe.py train' "
                     f"({type(exc).__name__}: {exc})")
    sizes = {h["size"] for h in heads.values()}
    if len(sizes) != 1:
        sys.exit(f"error: the heads were trained at different sizes {sorted(sizes)}")
    settings = TrainSettings(input_size=sizes.pop(), backbone_weights=args.backbone_weights,
                             augment_views=args.augment_views, framing=True, head_epochs=0,
                             finetune_epochs=0,
                             others_per_class=args.others_per_class, seed=args.seed)
    samples = load_samples(args.data)
    try:
        train_bundle(samples, settings, args.out, stages=tuple(sorted(heads)), recipe="weights",
                     cache_dir=args.cache, source=args.data, head_weights=heads)
    except ValueError as exc:  # e.g. a head trained on other classes than this data's
        sys.exit(f"error: {exc}")


def _name_and_path(value):
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"error: --external {value!r}: expected NAME=DATA")
    return name, path


def share(text: str) -> float:
    """An argparse type: a number in [0, 1] (a share of training batches)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--max-mb", type=float, default=34.0,
                   help="frames + weights at most this many MB (the GPU machine's transfer limit)")
    p.add_argument("--val-share", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--others-per-class", type=int, default=150)
    p.add_argument("--backbone-weights", default=None)
    p.add_argument("--external", action="append", default=[], metavar="NAME=DATA",
                   help="another lab's labelled set to score each stage-1 network on "
                        "(never trained on); repeatable")
    t = sub.add_parser("train")
    t.add_argument("job")
    t.add_argument("--out", required=True)
    t.add_argument("--sizes", default="224")
    t.add_argument("--stages", default="1,2")
    t.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of all runs")
    t.add_argument("--share", type=float, nargs=2, default=(0.65, 0.35),
                   help="shares of the budget of stage 1 and stage 2")
    t.add_argument("--clean", type=float, nargs=2, default=(0.25, 0.5),
                   help="share of clean frames in training, stage 1 and stage 2")
    t.add_argument("--head-epochs", type=int, default=3)
    t.add_argument("--finetune-epochs", type=int, default=40)
    t.add_argument("--head-lr", type=float, default=1e-3)
    t.add_argument("--finetune-lr", type=float, default=1e-4)
    t.add_argument("--patience", type=int, default=6)
    t.add_argument("--plateau", type=int, default=0,
                   help="multiply the learning rate by --plateau-factor after this many epochs "
                        "without a better val loss (0: constant rate, the recipe)")
    t.add_argument("--plateau-factor", type=float, default=0.3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--workers", type=int, default=15)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--first-trained", type=int, default=5, choices=(3, 4, 5),
                   help="the first VGG16 block fine-tuned (5: the recipe; 4 or 3: deeper, an "
                        "experiment whose weights the bundle step cannot use; the deeper "
                        "blocks' weights go to s{stage}-{size}-deeper.npz)")
    t.add_argument("--statistics", default="none", choices=("none", "dsu", "mixstyle"),
                   help="perturb each cell's channel statistics of the trunk maps in training "
                        "(an experiment; see perturb_statistics)")
    t.add_argument("--statistics-p", type=share, default=0.5,
                   help="share of training batches whose statistics are perturbed")
    t.add_argument("--randconv", type=share, default=0.0,
                   help="share of training batches convolved with random filters (an "
                        "experiment; see random_convolutions)")
    c = sub.add_parser("score", help="score stage-1 heads on the job's external sets")
    c.add_argument("job")
    c.add_argument("heads", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--size", type=int, default=160)
    c.add_argument("--classes", default="basophil,eosinophil,erythroblast,ig,lymphocyte,"
                                        "monocyte,neutrophil,platelet",
                   help="a bundle head's classes (sorted), when its file names none")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--dropout", type=float, default=0.2)
    c.add_argument("--workers", type=int, default=15)
    b = sub.add_parser("bundle")
    b.add_argument("data")
    b.add_argument("heads", nargs="+")
    b.add_argument("--out", required=True)
    b.add_argument("--cache", default=None)
    b.add_argument("--backbone-weights", default=None)
    b.add_argument("--others-per-class", type=int, default=150,
                   help="as given to pack (the stage-2 'Others' sample)")
    b.add_argument("--seed", type=int, default=0, help="as given to pack")
    b.add_argument("--augment-views", type=int, default=2,
                   help="augmented views per training image whose embeddings join the SVMs' "
                        "data (a share of the first two, as hiercell train does)")
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(args.data, args.out, args.max_mb, args.val_share, args.seed, args.backbone_weights,
             args.others_per_class, [_name_and_path(v) for v in args.external])
    elif args.cmd == "train":
        train(args)
    elif args.cmd == "score":
        score(args)
    else:
        bundle(args)


if __name__ == "__main__":
    main()
