"""Train an unconditional image generator and export it as a DiffusionPipeline.

    accelerate launch train_unconditional.py --config configs/quickstart.yaml [--flag value ...]

Flags follow diffusers' examples/unconditional_image_generation/train_unconditional.py; run with
--help for the list. The loop is smallgen/trainer.py; each model type is an objective in smallgen/objectives/.
"""

from smallgen.trainer import main

if __name__ == "__main__":
    main()
