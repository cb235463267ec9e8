"""The paper's final model (fused DINOv2 + SigLIP features, SigLIP text, QF layer) and recipe (SPEC 7).

Run on the released SMART-101 with local Hugging Face tower directories:

  python -m smartvlm_jax.main --config configs/smarter.py --workdir workdirs/smarter \
    --config.data.root=/data/SMART101-release-v1/SMART101-Data \
    --config.towers.dinov2=/models/dinov2-base \
    --config.towers.siglip=/models/siglip-base-patch16-224
"""

import os

import ml_collections

from smartvlm_jax.data import smart101
from smartvlm_jax.reasoner import config as head_config
from smartvlm_jax.workdir import user_cache_dir


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds initialisation, dropout and (with data_seed -1) the data order
    c.data_seed = -1  # seeds the training data order (-1: config.seed); members of a group share it

    c.data = smart101.default_data_config()  # SMART-101 folder, puzzles, split type, data_tot, ratio

    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.enabled = False  # write synthetic SMART-format puzzles to <workdir>/synthetic and use them
    c.synthetic.per_puzzle = 100  # instances per synthetic puzzle
    c.synthetic.seed = 0  # seed of the synthetic generator
    c.synthetic.puzzles = ""  # "": the 11 drawn families; "all": ids 1..101 (SMART-101's shape); or "1,7,..."
    c.synthetic.workers = 1  # processes writing puzzles (byte-identical output for any count)

    c.towers = ml_collections.ConfigDict()
    c.towers.dinov2 = ""  # local DINOv2 directory (Hugging Face layout or converted)
    c.towers.siglip = ""  # local SigLIP directory (full SiglipModel: vision, text and spiece.model)
    c.towers.resnet = ""  # local ResNet-50 directory (SMART baseline; HF ResNetModel or torchvision layout)
    c.towers.bert = ""  # local BERT directory with vocab.txt (SMART baseline: bert-base-uncased or mBERT)
    c.towers.dtype = "float32"  # "float32" (parity) or "bfloat16" (weights bf16, fp32 accumulation)
    c.towers.cpu_onednn = True  # CPU, one device: ViT blocks through the oneDNN kernels (README: CPU kernels)
    c.towers.tiny = False  # build tiny random towers (and a tokenizer) into <workdir>/towers instead
    c.towers.fsdp = False  # shard the towers' large matrices over the mesh's fsdp axis
    # "xla": XLA's attention (the platform's formulation); "flash": the Pallas TPU flash kernel, TPU
    # programs of --compile_only only so far (docs/tpu.md, "Will it fit")
    c.towers.attention = "xla"

    c.model = head_config.default_config()  # head architecture; puzzle ids and C_p come from the data

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # "adamw" (SMARTER) or "adam" (SMART baseline)
    c.optim.lr = 3e-4  # peak learning rate
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.98  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    c.optim.weight_decay = 0.2  # decoupled weight decay on every trainable parameter
    c.optim.grad_clip = 1.0  # global-norm gradient clipping (0 disables)
    c.optim.schedule = "warmup_cosine"  # "warmup_cosine" or "constant"
    c.optim.warmup_steps = 10  # linear warm-up from lr 0
    # As PyTorch's per-module AdamW: per-puzzle encoder/decoder rows a batch does not use keep their
    # weights, moments and step count (no decay); False: one dense AdamW over the stacked parameters.
    c.optim.skip_absent_rows = True

    c.batch_size = 128  # global batch size (all processes and devices together)
    c.eval_batch_size = 128  # global batch size of evaluation and feature extraction
    c.num_epochs = 3  # training epochs
    c.early_stop_patience = 3  # stop after more than this many epochs without a better val S_acc
    c.max_steps = -1  # stop after this many steps (-1: run all epochs); for tests and smoke runs

    c.cache_features = True  # extract frozen-tower features once and train the head alone on them
    c.feature_shard_batches = 16  # batches per feature-cache shard (the unit a killed extraction redoes)
    c.feature_dtype = "float32"  # cached float features stored as "float32" or "float16" (half the disk)
    # The feature store runs share (docs/training.md, "The feature cache"): one column per tower, keyed by
    # the data rows, the towers' files, dtypes and preprocessing. Default <user cache>/features
    # (~/.cache/smartvlm_jax/features); '' keeps the features in <workdir>/features. Multi-process jobs
    # need a store every host sees: the default then falls back to the workdir.
    c.feature_store = str(user_cache_dir("features"))
    c.worker_count = 0  # grain worker processes decoding images (0: in the main process)

    c.checkpoint_every_steps = 200  # save the latest train state (and data iterator) this often
    # ... and at each epoch's end, but these routine saves at least this many seconds apart (a save costs
    # ~0.1 s; a crash loses at most this much work). The last step and a SIGTERM always save. 0: every time.
    c.checkpoint_min_interval_secs = 30.0
    c.keep_checkpoints = 2  # latest checkpoints kept
    c.log_every_steps = 20  # JSON-lines and TensorBoard summaries this often
    # XLA's persistent compilation cache, shared by runs: a rerun loads what earlier runs compiled. Default:
    # $JAX_COMPILATION_CACHE_DIR if set, else <user cache>/jax (~/.cache/smartvlm_jax/jax); '' turns it off.
    c.compile_cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(user_cache_dir("jax"))

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1  # devices per fsdp group; the data axis takes the rest
    c.mesh.num_devices = -1  # use the first N devices of a single process (-1: every device of every process)

    c.distributed = ml_collections.ConfigDict()
    c.distributed.mode = "none"  # "none", "auto" (TPU/SLURM) or "explicit" (address/count/id below)
    c.distributed.coordinator_address = ""  # host:port of process 0 (explicit mode)
    c.distributed.num_processes = 1  # processes in the job (explicit mode)
    c.distributed.process_id = -1  # this process (explicit mode; -1: from SMARTVLM_PROCESS_ID/SLURM_PROCID)
    c.distributed.initialization_timeout_s = 120  # give up if peers do not join within this
    c.distributed.heartbeat_timeout_s = 30  # a peer silent this long aborts the job instead of hanging it
    return c
