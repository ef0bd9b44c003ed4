"""models of celltune.trainables."""
