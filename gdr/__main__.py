"""``python -m gdr restore ...``: the same as the ``gdr`` command (`gdr.commands`)."""

from gdr.commands import console

if __name__ == "__main__":
    console()
