"""Choose a run's EMA length after training: rebuild post-hoc EMAs from its snapshots, score each, export the best.

    python reconstruct_ema.py --run runs/quickstart --sigma_rel 0.03 0.05 0.07 0.10 0.14 0.20

The run must have trained with --posthoc_ema. Run with --help for every flag. The work is done in
smallgen/reconstruction.py (the math in smallgen/posthoc_ema.py).
"""

if __name__ == "__main__":
    from smallgen.environment import require_a_working_installation

    require_a_working_installation()  # before diffusers and transformers are imported
    from smallgen.reconstruction import main

    main()
