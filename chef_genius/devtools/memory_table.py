"""The memory table of docs/memory.md: FLAN-T5-large's plan on 8 to 80 GB cards (``python -m chef_genius.devtools.memory_table``)."""

from chef_genius.train.memory_plan import card_table

if __name__ == "__main__":
    print(card_table())
