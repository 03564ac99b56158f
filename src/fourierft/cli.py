"""``python -m fourierft.cli``: the command line, which lives with the recipes (``fourierft.recipes.cli``)."""

from .recipes.cli import main

if __name__ == "__main__":
    main()
