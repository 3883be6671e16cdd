"""Natural-language instructions for the 50 Meta-World v3 tasks.

Each task has training paraphrases (at least 3; the first is the canonical instruction stored with episodes) and
held-out paraphrases that no training episode uses, for testing language generalisation.
"""

from __future__ import annotations

import numpy as np

from defi.errors import DefiError

# task (without "-v3") -> (training paraphrases, held-out paraphrases)
INSTRUCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "assembly": (
        ("put the ring on the peg", "pick up the nut and place it onto the peg", "assemble the ring onto the peg"),
        ("slide the round nut down over the peg", "fit the ring onto the post"),
    ),
    "basketball": (
        ("put the ball into the basket", "dunk the basketball into the hoop", "pick up the ball and drop it in the hoop"),
        ("score a basket with the ball", "place the ball through the hoop"),
    ),
    "bin-picking": (
        ("move the cube from one bin to the other", "pick the block out of the bin and put it in the other bin",
         "transfer the cube into the target bin"),
        ("carry the block over to the second bin", "relocate the cube between the bins"),
    ),
    "box-close": (
        ("close the box with its lid", "put the lid on the box", "pick up the lid and cover the box"),
        ("place the cover onto the box", "shut the box by putting its top on"),
    ),
    "button-press-topdown": (
        ("press the button from the top", "push the button down from above", "press down on the button"),
        ("hit the button vertically from above", "push the top-facing button"),
    ),
    "button-press-topdown-wall": (
        ("press the button from the top behind the wall", "push the button down from above next to the wall",
         "reach over the wall and press the button down"),
        ("hit the walled button from above", "press the top button beside the wall"),
    ),
    "button-press": (
        ("press the button", "push the button forward", "press the button on the box"),
        ("poke the button horizontally", "push in the front button"),
    ),
    "button-press-wall": (
        ("press the button behind the wall", "push the button past the wall", "reach around the wall and press the button"),
        ("press the button that is blocked by a wall", "push the front button beyond the wall"),
    ),
    "coffee-button": (
        ("press the button on the coffee machine", "push the coffee machine button", "start the coffee machine"),
        ("turn on the espresso machine with its button", "hit the coffee maker's button"),
    ),
    "coffee-pull": (
        ("pull the mug away from the coffee machine", "take the cup out from under the coffee machine",
         "slide the mug back from the coffee machine"),
        ("draw the coffee cup toward you", "remove the mug from the machine"),
    ),
    "coffee-push": (
        ("push the mug under the coffee machine", "slide the cup under the coffee spout", "put the mug beneath the coffee machine"),
        ("move the coffee cup into the machine", "shove the mug under the dispenser"),
    ),
    "dial-turn": (
        ("turn the dial", "rotate the dial", "spin the knob around"),
        ("twist the dial a quarter turn", "rotate the round knob"),
    ),
    "disassemble": (
        ("take the ring off the peg", "lift the nut off the peg", "disassemble the ring from the peg"),
        ("pull the round nut up and off the post", "remove the ring from the peg"),
    ),
    "door-close": (
        ("close the door", "push the door shut", "swing the door closed"),
        ("shut the open door", "close the hinged door"),
    ),
    "door-lock": (
        ("lock the door", "turn the door lock down", "rotate the lock to lock the door"),
        ("engage the door lock", "twist the lock into the locked position"),
    ),
    "door-open": (
        ("open the door", "pull the door open", "swing the door open by its handle"),
        ("open the hinged door", "pull on the handle to open the door"),
    ),
    "door-unlock": (
        ("unlock the door", "turn the door lock up", "rotate the lock to unlock the door"),
        ("disengage the door lock", "twist the lock into the unlocked position"),
    ),
    "hand-insert": (
        ("put the block into the hole", "insert the object into the hole in the table", "push the block into the hole"),
        ("drop the block into the opening", "place the object inside the hole"),
    ),
    "drawer-close": (
        ("close the drawer", "push the drawer shut", "slide the drawer closed"),
        ("shut the open drawer", "push the drawer back in"),
    ),
    "drawer-open": (
        ("open the drawer", "pull the drawer open", "slide the drawer out"),
        ("pull out the drawer by its handle", "open up the drawer"),
    ),
    "faucet-open": (
        ("open the faucet", "turn the faucet on", "rotate the faucet handle to open it"),
        ("turn on the tap", "twist the faucet handle open"),
    ),
    "faucet-close": (
        ("close the faucet", "turn the faucet off", "rotate the faucet handle to close it"),
        ("turn off the tap", "twist the faucet handle shut"),
    ),
    "hammer": (
        ("hammer the nail into the wall", "pick up the hammer and drive the nail in", "use the hammer to hit the nail"),
        ("knock the nail in with the hammer", "pound the nail using the hammer"),
    ),
    "handle-press-side": (
        ("press the handle down from the side", "push the side handle down", "press down on the handle sideways"),
        ("push the handle down, approaching from the side", "lower the side handle"),
    ),
    "handle-press": (
        ("press the handle down", "push the handle down", "press down on the handle"),
        ("lower the handle", "push the lever handle downward"),
    ),
    "handle-pull-side": (
        ("pull the handle up from the side", "lift the side handle up", "pull up on the handle sideways"),
        ("raise the handle, approaching from the side", "lift up the side handle"),
    ),
    "handle-pull": (
        ("pull the handle up", "lift the handle up", "pull up on the handle"),
        ("raise the handle", "draw the handle upward"),
    ),
    "lever-pull": (
        ("pull the lever up", "lift the lever", "rotate the lever upward"),
        ("raise the lever", "flip the lever up"),
    ),
    "pick-place-wall": (
        ("pick up the puck and place it behind the wall", "move the puck over the wall to the goal",
         "lift the puck over the wall and put it down at the target"),
        ("carry the puck across the wall to the target", "place the puck on the far side of the wall"),
    ),
    "pick-out-of-hole": (
        ("pick the block out of the hole", "lift the object out of the hole", "take the block out of the hole and raise it"),
        ("retrieve the block from the hole", "pull the object up out of the opening"),
    ),
    "pick-place": (
        ("pick up the puck and place it at the goal", "move the puck to the target", "grasp the puck and put it at the goal"),
        ("carry the puck to the target location", "lift the puck and set it down at the goal"),
    ),
    "plate-slide": (
        ("slide the plate into the goal", "push the plate forward into the net", "slide the plate to the target"),
        ("shove the plate into the cabinet", "push the plate into the goal area"),
    ),
    "plate-slide-side": (
        ("slide the plate sideways into the goal", "push the plate into the net from the side", "slide the plate to the side target"),
        ("shove the plate sideways into the cabinet", "push the plate laterally to the goal"),
    ),
    "plate-slide-back": (
        ("slide the plate back out of the goal", "pull the plate back from the net", "slide the plate backwards to the target"),
        ("draw the plate out of the cabinet", "pull the plate back toward you"),
    ),
    "plate-slide-back-side": (
        ("slide the plate back out of the goal sideways", "pull the plate out of the net to the side",
         "slide the plate backwards to the side target"),
        ("draw the plate sideways out of the cabinet", "pull the plate back laterally"),
    ),
    "peg-insert-side": (
        ("insert the peg into the hole from the side", "push the peg sideways into the hole", "pick up the peg and insert it sideways"),
        ("slide the peg into the side opening", "fit the peg into the hole horizontally"),
    ),
    "peg-unplug-side": (
        ("unplug the peg from the side", "pull the peg out of the hole sideways", "remove the peg from its socket"),
        ("extract the peg horizontally", "pull out the plugged peg"),
    ),
    "soccer": (
        ("kick the ball into the goal", "push the soccer ball into the net", "move the ball into the goal"),
        ("score a goal with the ball", "roll the ball into the net"),
    ),
    "stick-push": (
        ("use the stick to push the bottle", "grab the stick and push the bottle with it", "push the bottle using the stick"),
        ("shove the bottle forward with the stick", "move the bottle by pushing it with the stick"),
    ),
    "stick-pull": (
        ("use the stick to pull the bottle", "grab the stick and pull the bottle with it", "pull the bottle using the stick"),
        ("hook the bottle with the stick and drag it", "draw the bottle toward you with the stick"),
    ),
    "push": (
        ("push the puck to the goal", "slide the puck to the target", "push the puck across the table to the goal"),
        ("shove the puck to the target location", "move the puck to the goal by pushing it"),
    ),
    "push-wall": (
        ("push the puck around the wall to the goal", "slide the puck past the wall to the target",
         "push the puck to the goal behind the wall"),
        ("shove the puck around the wall", "move the puck beyond the wall by pushing it"),
    ),
    "push-back": (
        ("push the puck backwards to the goal", "slide the puck back to the target", "pull the puck back to the goal"),
        ("move the puck back toward you", "drag the puck backwards to the target"),
    ),
    "reach": (
        ("reach the goal position", "move the gripper to the target", "reach to the goal"),
        ("bring the hand to the target point", "go to the goal location"),
    ),
    "reach-wall": (
        ("reach the goal behind the wall", "move the gripper over the wall to the target", "reach past the wall to the goal"),
        ("bring the hand to the target beyond the wall", "go around the wall to the goal"),
    ),
    "shelf-place": (
        ("put the block on the shelf", "pick up the block and place it on the shelf", "place the cube onto the shelf"),
        ("set the block on the shelf", "lift the cube up onto the shelf"),
    ),
    "sweep-into": (
        ("sweep the puck into the hole", "push the puck into the hole", "slide the puck into the hole"),
        ("brush the puck into the opening", "sweep the block into the hole in the table"),
    ),
    "sweep": (
        ("sweep the puck off the table", "push the puck off the edge of the table", "slide the puck off the table"),
        ("brush the puck over the table edge", "sweep the block off the side of the table"),
    ),
    "window-open": (
        ("open the window", "slide the window open", "push the window open sideways"),
        ("open the sliding window", "move the window pane to open it"),
    ),
    "window-close": (
        ("close the window", "slide the window shut", "push the window closed sideways"),
        ("close the sliding window", "move the window pane to shut it"),
    ),
}


def _key(task: str) -> str:
    key = task[:-3] if task.endswith("-v3") else task
    if key not in INSTRUCTIONS:
        raise DefiError(f"no instructions for task {task!r}; known: {', '.join(sorted(INSTRUCTIONS))}")
    return key


def has_instructions(task: str) -> bool:
    return (task[:-3] if task.endswith("-v3") else task) in INSTRUCTIONS


def instruction(task: str) -> str:
    """The canonical instruction of a task."""
    return INSTRUCTIONS[_key(task)][0][0]


def paraphrases(task: str, held_out: bool = False) -> tuple[str, ...]:
    """The training paraphrases of a task (canonical first), or its held-out ones."""
    train, test = INSTRUCTIONS[_key(task)]
    return test if held_out else train


def sample_instruction(task: str, rng: np.random.Generator) -> str:
    """A training paraphrase drawn from `rng` (for language augmentation)."""
    options = paraphrases(task)
    return options[int(rng.integers(len(options)))]
