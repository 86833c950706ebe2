"""Write a synthetic face data set: an image folder with one sub-folder per expression class (PNG files).

Faces are procedural (seeded, deterministic): head shape, eyes, brows and mouth depend on the class; pose,
skin tone, background, lighting and noise vary. `--domain infant` draws rounder heads, bigger eyes,
lighter/rosier skin and softer warm light, so adult-vs-infant domain shift can be measured."""

from __future__ import annotations

from infantino.trainer.synth import DIFFICULTIES, DOMAINS, write_dataset

HELP = "write a synthetic face data set (image folder)"


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--n", type=int, required=True, help="number of images (classes balanced)")
    p.add_argument("--domain", choices=DOMAINS, default="adult", help="face proportions and lighting (default adult)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same images (default 0)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--difficulty", choices=DIFFICULTIES, default="easy",
                   help="pose/lighting/clutter jitter: easy learns in minutes on a CPU (default easy)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")


def run(args) -> int:
    out = write_dataset(args.out, args.n, domain=args.domain, seed=args.seed, size=args.size,
                        difficulty=args.difficulty, overwrite=args.overwrite, progress=True)
    print(f"wrote {args.n} {args.domain} faces ({args.difficulty}, {args.size}px, seed {args.seed}) to {out}")
    return 0
