"""The preset files of ``pyro-cwvae fit``: one TOML file per dataset and the demo, read by ``config.preset``."""
