"""FID and KID of a trained pipeline (or a folder of images) against a dataset split.

    python evaluate_fid.py --pipeline runs/quickstart --dataset_name ../shared/data/cifar10 \
        --split train --num_samples 10000 --scheduler ddim --num_inference_steps 10 50 100 \
        --output_json results/quickstart.json --markdown
    python evaluate_fid.py --compare results/*.json

Run with --help for every flag. The work is done in smallgen/evaluation.py.
"""

if __name__ == "__main__":
    from smallgen.environment import require_a_working_installation

    require_a_working_installation()  # before diffusers and transformers are imported
    from smallgen.evaluation import main

    main()
