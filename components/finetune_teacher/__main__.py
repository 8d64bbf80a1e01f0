"""python -m components.finetune_teacher"""

from components.finetune_teacher import main

if __name__ == "__main__":
    raise SystemExit(main())
