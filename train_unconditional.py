"""Train an unconditional image generator and export it as a DiffusionPipeline.

    accelerate launch train_unconditional.py --config configs/quickstart.yaml [--flag value ...]

Flags follow diffusers' examples/unconditional_image_generation/train_unconditional.py; run with
--help for the list. The loop is smallgen/trainer.py; each model type is an objective in smallgen/objectives/.
"""

if __name__ == "__main__":
    from smallgen.environment import require_a_working_installation

    require_a_working_installation()  # before diffusers and transformers are imported
    from smallgen.trainer import main

    main()
