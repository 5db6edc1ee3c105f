"""Figures of a rollout, an evaluation and a training history, drawn off screen into files."""
import matplotlib

matplotlib.use("Agg")  # chosen before any module of the stage imports pyplot: figures go to files, never a window
