"""Print, as one JSON line, a SHA-256 of every model tensor (not the optimizer's) of each given
dist checkpoint, read whole in one process.

    python tests/distributed/checkpoint_digests.py CKPT_DIR [CKPT_DIR ...]
"""

import hashlib
import json
import sys


def main(directories: list[str]) -> None:
    import torch

    from megatron_cpt.conversion.mcore_io import (load_global_tensors, read_tensor_metadata,
                                                  single_rank_session)

    digests = {}
    with single_rank_session():
        for directory in directories:
            metadata = read_tensor_metadata(directory)
            keys = sorted(key for key in metadata if not key.startswith("optimizer."))
            tensors = load_global_tensors(directory, metadata, keys, layer=None)
            digests[directory] = {
                key: hashlib.sha256(tensors[key].contiguous().view(-1).view(torch.uint8).numpy()
                                    .tobytes()).hexdigest() for key in keys}
    print(json.dumps(digests), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
