"""python -m components.evaluate"""

from components.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
