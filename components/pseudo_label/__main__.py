"""python -m components.pseudo_label (and `... merge`)"""

from components.pseudo_label import main

if __name__ == "__main__":
    raise SystemExit(main())
