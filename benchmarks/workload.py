"""The benchmarks' one workload: the tutorial's, generated locally, seeded, cached in ``benchmarks/data/``.

* ``n`` synthetic CIFAR-shaped training images (uint8 HWC, 32x32x3; 50,000 by default) and a pool of test images
  (2,000 at 50k): each class has a fixed low-frequency colour pattern, images are pattern + noise, and 5% of the
  training labels are flipped (so self-influence has mislabelled examples to find; ``flipped`` marks them).
* the tutorial's ``Net`` trained with SGD (batch 128), one checkpoint per epoch (an epoch is a random permutation of
  the training set, at most 50,000 rows of it), 6 checkpoints saved as ``{"model_state_dict": ...}``: the
  tutorial's ``checkpoints_load_func`` and the engine's default loader both read them.
* the training set as a Dataset: ``pil`` (a PIL image per item, then ``ToTensor() + Normalize((0.5,)*3, (0.5,)*3)``,
  like the tutorial's), ``cifar10`` (torchvision's own ``CIFAR10`` class holding the synthetic arrays: what the
  tutorial really passes), ``tensor`` (a TensorDataset of the same preprocessed floats) or ``uint8`` (a generic
  per-item Dataset doing the same arithmetic on tensors, no PIL).

:func:`store_workload` is a second, smaller shape for a factor store of any row count: 8x8 digits-like images and an
MLP, made in memory in seconds.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tracin_widgets.tutorial import Net, checkpoints_load_func

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_DIR = HERE / "data"

N_FULL = 50_000
N_TEST_POOL = 2_000
N_CKPT = 6
N_CLASSES = 10
LABEL_NOISE = 0.05
EPOCH_ROWS = 50_000  # SGD rows per checkpoint, at most
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCES = ("pil", "cifar10", "tensor", "uint8")


# ----------------------------------------------------------------------------------------------------------- images
def preprocess(x_uint8_hwc: np.ndarray) -> torch.Tensor:
    """Vectorised ToTensor + Normalize(0.5, 0.5): uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.from_numpy(x_uint8_hwc).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    return x.sub_(0.5).div_(0.5)


def make_templates(seed: int) -> np.ndarray:
    """One low-frequency colour pattern per class (4x4 per channel, smoothly upsampled to 32x32)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0, 1, size=(N_CLASSES, 3, 4, 4)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    fine = fine / fine.flatten(1).std(1).view(-1, 1, 1, 1)
    return (28.0 * fine).permute(0, 2, 3, 1).numpy()  # (C, 32, 32, 3)


def generate_images(n: int, seed: int, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for s in range(0, n, 5000):  # chunks: the float noise of 50k images at once would take 600 MB
        y = labels[s : s + 5000]
        m = len(y)
        amp = rng.uniform(0.6, 1.4, size=(m, 1, 1, 1)).astype(np.float32)
        bright = rng.normal(0, 12, size=(m, 1, 1, 3)).astype(np.float32)
        noise = rng.normal(0, 45, size=(m, 32, 32, 3)).astype(np.float32)
        img = 128.0 + amp * templates[y] + bright + noise
        out[s : s + m] = np.clip(img, 0, 255).astype(np.uint8)
    return out, labels.astype(np.int64)


def train_checkpoints(x: torch.Tensor, y: torch.Tensor, ckpt_dir: Path, device: str, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    net = Net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    xd, yd = x.to(device), y.to(device)
    log = []
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(N_CKPT):
        perm = torch.randperm(len(y), generator=g)[:EPOCH_ROWS].to(device)
        net.train()
        tot, correct = 0.0, 0
        for s in range(0, len(perm), 128):
            idx = perm[s : s + 128]
            out = net(xd[idx])
            loss = loss_fn(out, yd[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yd[idx]).sum())
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        torch.save({"model_state_dict": state, "epoch": epoch}, ckpt_dir / f"checkpoint-{epoch}.pt")
        log.append({"epoch": epoch, "train_loss": tot / len(perm), "train_acc": correct / len(perm)})
        print(f"  epoch {epoch}: loss {tot / len(perm):.3f} acc {correct / len(perm):.3f}", flush=True)
    return log


def _tag(seed: int, n: int, n_test: int) -> str:
    if n == N_FULL and n_test == N_TEST_POOL:
        return f"seed{seed}"
    return f"seed{seed}-n{n}" + ("" if n_test == max(64, n // 25) else f"-t{n_test}")


def prepare_data(
    data_dir: Path = DATA_DIR, seed: int = 0, device: str = "cpu", n_full: int = N_FULL, n_test: int | None = None
) -> dict:
    """Generate (once) the images and the 6 checkpoints; return the arrays, the checkpoint paths and ``meta``.

    ``n_test`` defaults to 2,000 at 50k and to ``n_full // 25`` (at least 64) otherwise."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if n_test is None:
        n_test = N_TEST_POOL if n_full == N_FULL else max(64, n_full // 25)
    tag = _tag(seed, n_full, n_test)
    npz, ckpt_dir = data_dir / f"synth-cifar-{tag}.npz", data_dir / f"checkpoints-{tag}"
    meta_path = data_dir / f"meta-{tag}.json"
    if not npz.is_file():
        t0 = time.perf_counter()
        templates = make_templates(seed)
        xtr, ytr_clean = generate_images(n_full, seed + 1, templates)
        xte, yte = generate_images(n_test, seed + 2, templates)
        rng = np.random.default_rng(seed + 3)
        flipped = rng.random(n_full) < LABEL_NOISE
        ytr = ytr_clean.copy()
        ytr[flipped] = (ytr_clean[flipped] + rng.integers(1, N_CLASSES, size=int(flipped.sum()))) % N_CLASSES
        tmp = npz.with_suffix(".tmp.npz")
        np.savez(tmp, x_train=xtr, y_train=ytr, y_train_clean=ytr_clean, flipped=flipped, x_test=xte, y_test=yte)
        os.replace(tmp, npz)
        print(f"generated {npz} in {time.perf_counter() - t0:.1f} s", flush=True)
    d = np.load(npz)
    data = {k: d[k] for k in d.files}
    paths = [str(ckpt_dir / f"checkpoint-{i}.pt") for i in range(N_CKPT)]
    if not all(os.path.isfile(p) for p in paths) or not meta_path.is_file():
        t0 = time.perf_counter()
        print(f"training {N_CKPT} checkpoints on {device} ...", flush=True)
        log = train_checkpoints(preprocess(data["x_train"]), torch.from_numpy(data["y_train"]), ckpt_dir, device, seed)
        net = Net()
        checkpoints_load_func(net, paths[-1])
        with torch.no_grad():
            acc = float((net(preprocess(data["x_test"])).argmax(1).numpy() == data["y_test"]).mean())
        meta = {"train_log": log, "test_acc": acc, "train_seconds": time.perf_counter() - t0, "device": device}
        meta_path.write_text(json.dumps(meta, indent=1))
        print(f"trained in {meta['train_seconds']:.1f} s; test accuracy {acc:.3f}", flush=True)
    data["meta"] = json.loads(meta_path.read_text())
    data["checkpoints"] = paths
    return data


# ----------------------------------------------------------------------------------------------------------- datasets
class PILDataset(Dataset):
    """Like torchvision's CIFAR10: a PIL image per item, then ToTensor + Normalize; int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        import torchvision.transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class UInt8Dataset(Dataset):
    """uint8 NHWC images -> (normalised float 3x32x32 tensor, int label) per item, as ToTensor + Normalize, no PIL."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(images)  # (n, 32, 32, 3) uint8, shared, no copy
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].permute(2, 0, 1).float().div_(255.0).sub_(0.5).div_(0.5)
        return x, int(self.labels[i])


def cifar10_dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
    """The tutorial's own dataset class, ``torchvision.datasets.CIFAR10`` (its ``__getitem__``: a PIL image per
    item, then the transform), holding the synthetic arrays: the real files cannot be downloaded here, so the
    object is made without its constructor (which only locates and unpickles the files)."""
    import torchvision.transforms as T
    from torchvision.datasets import CIFAR10

    ds = CIFAR10.__new__(CIFAR10)
    ds.root, ds.train, ds.target_transform = "synthetic", True, None
    ds.transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    ds.data, ds.targets = np.ascontiguousarray(images), [int(v) for v in labels]
    return ds


def dataset(source: str, images: np.ndarray, labels: np.ndarray) -> Dataset:
    """The training set read through one of :data:`SOURCES`."""
    if source == "pil":
        return PILDataset(images, labels)
    if source == "cifar10":
        return cifar10_dataset(images, labels)
    if source == "tensor":
        return TensorDataset(preprocess(images), torch.from_numpy(labels))
    if source == "uint8":
        return UInt8Dataset(images, labels)
    raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")


class DeviceLoader(DataLoader):
    """A DataLoader that moves each batch to ``device`` (Captum does not move training batches itself)."""

    def __init__(self, *args, device: torch.device, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_device = device

    def __iter__(self):
        for batch in super().__iter__():
            yield tuple(b.to(self.target_device) for b in batch)


# ----------------------------------------------------------------------------------------------------------- store
def store_workload(n_train: int, n_test: int, seed: int, folder: Path, checkpoints: int = 5) -> dict:
    """Digits-like data at any size, made in seconds: 8x8 grayscale images (each class a fixed random 8x8 pattern
    plus noise, float32 (1, 8, 8)) in TensorDatasets, 5 % of the training labels flipped; an MLP 64 -> 32 -> 10
    trained with SGD, one checkpoint per 20,000 random rows."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.0, 1.0, (10, 8, 8)).astype(np.float32)

    def make(n: int) -> tuple[torch.Tensor, np.ndarray]:
        y = rng.integers(0, 10, n)
        x = np.empty((n, 1, 8, 8), np.float32)
        for s in range(0, n, 250_000):
            e = min(n, s + 250_000)
            x[s:e, 0] = templates[y[s:e]] + 0.4 * rng.standard_normal((e - s, 8, 8), dtype=np.float32)
        return torch.from_numpy(x), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    flipped = np.zeros(n_train, dtype=bool)
    flip = rng.choice(n_train, int(round(LABEL_NOISE * n_train)), replace=False)
    flipped[flip] = True
    y_noisy = y_train.copy()
    y_noisy[flip] = (y_train[flip] + rng.integers(1, 10, len(flip))) % 10
    train = TensorDataset(x_train, torch.from_numpy(y_noisy))
    test = TensorDataset(x_test, torch.from_numpy(y_test))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ckpts = []
    for c in range(checkpoints):
        order = torch.randint(0, n_train, (20_000,), generator=g)
        for s in range(0, len(order), 256):
            idx = order[s : s + 256]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]), train.tensors[1][idx]).backward()
            opt.step()
        ckpts.append(str(folder / f"checkpoint-{c}.pt"))
        torch.save(model.state_dict(), ckpts[-1])
    with torch.no_grad():
        acc = float((model(x_test).argmax(1).numpy() == y_test).mean())
    return {"model": model, "checkpoints": ckpts, "train": train, "test": test, "is_mislabelled": flipped, "acc": acc}


# ----------------------------------------------------------------------------------------------------------- machine
def machine_info(device: torch.device | str = "cpu") -> dict:
    """The machine and the versions a results file records."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    for pkg in ("captum", "annoy", "anywidget", "ipywidgets"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
