"""DiffusionPipeline classes for every model type this project trains."""
