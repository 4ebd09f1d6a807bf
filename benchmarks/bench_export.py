"""Speed of the exported TorchScript pipeline against rdcnet.predict (same model, same images,
same labels), on CPU. Not a pytest-benchmark suite: run it as a script.

    python benchmarks/bench_export.py [--checkpoint best.pt] [--repeats 5]

Without --checkpoint it trains the demo's model (rdcnet.demo.DEMO_MODEL) briefly on synthetic
nuclei, so the decoding sees a realistic number of centres. Prints a Markdown table: median
wall time per image of the whole call (normalisation, network, decoding) and of the decoding
alone (rdcnet_ext.ops.embeddings_to_labels vs the scripted decoder), and whether the labels
are equal.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (TorchScript's profiling executor optimises on the first calls)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(checkpoint, steps: int, out: Path):
    from rdcnet.data import nuclei_2d
    from rdcnet.demo import DEMO_CROP, DEMO_MARGIN, DEMO_MODEL, DEMO_SHAPE
    from rdcnet.model import RDCNet
    from rdcnet.postprocess import PostprocessConfig
    from rdcnet.train import TrainConfig, train

    if checkpoint is None:
        torch.manual_seed(0)
        post = PostprocessConfig(margin=DEMO_MARGIN, min_votes=5, smooth_radius=1)
        cfg = TrainConfig(out_dir=str(out), margin=DEMO_MARGIN, crop=DEMO_CROP, epochs=1, steps_per_epoch=steps,
                          device="cpu", postprocess=post)
        checkpoint = train(RDCNet(**DEMO_MODEL), nuclei_2d(16, DEMO_SHAPE, seed=0), nuclei_2d(4, DEMO_SHAPE, seed=1),
                           cfg, resume=False, progress=False).best_checkpoint
    return checkpoint


def main(argv=None) -> int:
    from rdcnet.data import nuclei_2d
    from rdcnet.export import export_torchscript
    from rdcnet.predict import predict, predict_output, prepare_image
    from rdcnet.postprocess import labels_from_output
    from rdcnet.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024], help="square image sizes")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _model(args.checkpoint, args.train_steps, Path(tmp) / "run")
        model, post, _ = load_checkpoint(ckpt)
        pipeline = torch.jit.load(str(export_torchscript(ckpt, Path(tmp) / "rdcnet.pt")))
        rows = []
        for size in args.sizes:
            for image, _ in nuclei_2d(2 if size <= 256 else 1, (size, size), seed=7):
                x = torch.from_numpy(image)
                expected = predict(model, image, post)
                got = pipeline(x).numpy()
                out = predict_output(model, prepare_image(image, model))
                emb, prob = out.embeddings, out.probabilities
                rows.append(dict(
                    shape=(size, size), objects=int(expected.max()), equal=bool(np.array_equal(got, expected)),
                    predict=_median_time(lambda: predict(model, image, post), args.repeats),
                    script=_median_time(lambda: pipeline(x), args.repeats),
                    decode_ops=_median_time(lambda: labels_from_output(emb, prob, model.config.spacing, post),
                                            args.repeats),
                    decode_script=_median_time(lambda: pipeline.decoder(emb, prob), args.repeats)))
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; python {platform.python_version()}; {time.strftime('%Y-%m-%d')}")
    print(f"command: python benchmarks/bench_export.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print()
    print("| image | objects | labels equal | rdcnet.predict | TorchScript pipeline | ratio | decode: rdcnet_ext | "
          "decode: scripted | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape'][0]}×{r['shape'][1]} | {r['objects']} | {'yes' if r['equal'] else 'NO'} | "
              f"{r['predict'] * 1e3:.1f} ms | {r['script'] * 1e3:.1f} ms | {r['script'] / r['predict']:.2f}× | "
              f"{r['decode_ops'] * 1e3:.2f} ms | {r['decode_script'] * 1e3:.2f} ms | "
              f"{r['decode_script'] / r['decode_ops']:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
