"""Training text as token ids: WikiText-103 and the GPT-2 tokenizer (or local stand-ins,
or an offline demo), token ids cached on disk, and batches of blocks with next-token
targets. One module per job:

  hub.py          can the Hugging Face hub be reached; what to say when it cannot
  text.py         where the text comes from: local files, the hub's WikiText, the demo
  text
  tokenizer.py    GPT-2's tokenizer, from a folder or the hub, or the demo BPE
  token_cache.py  the ids of each split, tokenized once and kept as a flat file
  corpus.py       load_corpus: all of the above, in one call
  batches.py      random training blocks and consecutive evaluation blocks
"""

from .batches import random_blocks, sequential_blocks
from .corpus import Corpus, load_corpus
from .hub import hub_reachable
from .tokenizer import DemoDataWarning, load_tokenizer

__all__ = [
    "Corpus",
    "DemoDataWarning",
    "hub_reachable",
    "load_corpus",
    "load_tokenizer",
    "random_blocks",
    "sequential_blocks",
]
