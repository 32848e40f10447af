from model_trainer.commands.cli import main

main()
