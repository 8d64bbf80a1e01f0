"""python -m components.distill_student"""

from components.distill_student import main

if __name__ == "__main__":
    raise SystemExit(main())
