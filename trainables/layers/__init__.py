"""layers of celltune.trainables."""
