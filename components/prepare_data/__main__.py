"""python -m components.prepare_data"""

from components.prepare_data import main

if __name__ == "__main__":
    raise SystemExit(main())
