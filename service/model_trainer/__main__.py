from model_trainer.cli import main

main()
