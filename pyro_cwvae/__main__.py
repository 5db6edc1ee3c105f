from pyro_cwvae.cli.app import main

main()
