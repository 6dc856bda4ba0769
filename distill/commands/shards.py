"""distill shards SRC OUT --shard-size N: webdataset shards from an image folder or an EDM dataset zip."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub, name):
    p = sub.add_parser(name, help="write webdataset shards from an image folder or a dataset zip",
                       description="Write SRC (a folder with one subfolder per class, or an EDM dataset zip "
                                   "with dataset.json labels) as webdataset shards OUT/shard-NNNNNN.tar. "
                                   "Train on them with data.name=webdataset "
                                   "data.path='OUT/shard-{000000..NNNNNN}.tar'. Links to files outside SRC "
                                   "and files over --max-member-mb are refused before anything is written.")
    p.add_argument("src", help="image folder or dataset .zip")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard'; a plain name)")
    p.add_argument("--max-member-mb", type=float, default=64,
                   help="refuse (not read) any file larger than this, in MiB (default 64)")
    p.add_argument("--captions", action="store_true",
                   help="SRC is a caption folder (each image with a .txt): shards hold KEY.<image> + KEY.txt")
    p.add_argument("--latents", metavar="PIPELINE", default=None,
                   help="with a caption folder: encode the images once with this Stable Diffusion pipeline "
                        "folder's VAE (its scaling_factor applied); shards hold KEY.npy (float16) + KEY.txt")
    p.add_argument("--resolution", type=int, default=None, help="pixel size for --latents (default: the UNet's)")
    return p


def run(args) -> int:
    from distill.cli import BadInput
    from distill.data.shards import write_shards

    if not Path(args.src).exists():
        raise FileNotFoundError(f"{args.src}: no such folder or zip file")
    if args.shard_size < 1:
        raise BadInput(f"--shard-size must be a positive number of samples, got {args.shard_size}")
    if not args.max_member_mb > 0:
        raise BadInput(f"--max-member-mb must be positive, got {args.max_member_mb}")
    max_bytes = int(args.max_member_mb * 2**20)
    try:
        if args.captions or args.latents:
            paths = caption_shards(args, max_bytes)
        else:
            paths = write_shards(args.src, args.out, args.shard_size, args.prefix, max_bytes)
    except ValueError as err:  # a link out of SRC, a file over the limit, a bad prefix, a bad dataset.json
        raise BadInput(str(err)) from None
    last = len(paths) - 1
    print(f"wrote {len(paths)} shards to {args.out}; train with data.name=webdataset "
          f"data.path='{Path(args.out) / args.prefix}-{{000000..{last:06d}}}.tar'")
    return 0


def caption_shards(args, max_bytes: int):
    import teachers
    from distill.data.shards import write_caption_shards

    teacher = None
    if args.latents:
        teacher = teachers.load({"name": "diffusers_latent", "path": args.latents, "resolution": args.resolution})
    return write_caption_shards(args.src, args.out, args.shard_size, args.prefix, teacher=teacher,
                                max_bytes=max_bytes)
