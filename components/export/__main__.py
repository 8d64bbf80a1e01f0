"""python -m components.export"""

from components.export import main

if __name__ == "__main__":
    raise SystemExit(main())
