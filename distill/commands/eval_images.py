"""distill eval --images FOLDER (--ref FILE | --ref-images FOLDER) [--inception FILE] [--out fid.json]

FID of any image folder by clean-fid's "clean" protocol (PIL bicubic resize to 299), against another folder
or reference statistics (an .npz with mu and sigma of 2048-d pool3 features: clean-fid's, EDM's, ADM's, or
ours). Offline only: the Inception weights come from a local file (--inception, default the torch hub cache)
and every missing file exits 2 with its path.
"""

from __future__ import annotations

import json
from pathlib import Path


def reference(args, model_dim: int):
    """(ref_folder or None, ref stats or None, description), checked before any feature is computed."""
    from distill.cli import BadInput
    from distill.evaluation.metrics.extractors import INCEPTION_CLEAN
    from distill.evaluation.metrics.folders import image_count
    from distill.evaluation.metrics.reference import check_compatible, load_stats

    if bool(args.ref) == bool(args.ref_images):
        raise BadInput("--images needs exactly one reference: --ref FILE (.npz with mu and sigma) or "
                       "--ref-images FOLDER")
    if args.ref_images:
        return args.ref_images, None, f"{image_count(args.ref_images)} images in {args.ref_images}"
    stats = load_stats(args.ref)  # FileNotFoundError / ValueError naming the file
    if stats.mu is None:
        raise BadInput(f"{args.ref}: holds images, not statistics; unpack them into a folder and pass "
                       "--ref-images FOLDER")
    check_compatible(stats, INCEPTION_CLEAN, model_dim, args.ref)
    if stats.features is None:
        print(f"note: {args.ref} does not say how it was made; this FID is valid only if its statistics "
              "follow clean-fid's clean protocol (2048-d pool3 after PIL bicubic resize)")
    return None, (stats.mu, stats.sigma), stats.description


def run_images(args) -> int:
    import torch

    from distill.cli import BadInput
    from distill.evaluation.metrics.extractors import INCEPTION_CLEAN
    from distill.evaluation.metrics.folders import clean_inception, folder_fid, image_count

    if not args.images:
        raise BadInput("--ref-images goes with --images FOLDER")
    if args.path:
        raise BadInput("give either PATH (a student's report) or --images FOLDER (a folder's FID), not both")
    try:
        num = image_count(args.images)
        ref_folder, ref_stats, described = reference(args, 2048)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = clean_inception(args.inception, device)
    except ValueError as err:
        raise BadInput(str(err)) from None
    value = folder_fid(args.images, model, ref_folder=ref_folder, ref_stats=ref_stats, device=device,
                       batch_size=min(args.batch_size, 100))
    result = {"fid": value, "num_images": num, "images": str(args.images), "reference": described,
              "features": INCEPTION_CLEAN, "protocol": "clean-fid clean (PIL bicubic resize to 299, float)"}
    print(f"FID {value:.4f} ({num} images in {args.images} vs {described}; {INCEPTION_CLEAN})")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
