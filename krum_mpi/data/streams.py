"""The tags of the seeded random streams of the data side.

Every random draw of the data side is seeded by ``numpy.random.default_rng([seed, TAG, ...])`` with
a distinct TAG per purpose, so no two purposes share a stream. They live here, apart from
``base``, so that the split policies (``shard``) and the datasets can both use them.
"""

# One tag per purpose of a random stream (the second word of every seed sequence).
TAG_TEST_SPLIT = 1    # train/test split of datasets without a test part
TAG_SHARD = 2         # assignment of training samples to workers
TAG_BATCH = 3         # minibatch draws
TAG_TEACHER = 4       # synthetic: teacher weights / mixture means
TAG_TRAIN = 5         # synthetic: training samples
TAG_TEST = 6          # synthetic: test samples
TAG_SUBSAMPLE = 7     # data.max_train
TAG_VALIDATION = 8    # data.validation_fraction: validation rows carved from the training set
