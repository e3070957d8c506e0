"""Dimensions of the reference adult, supine and head first, in body-frame millimetres (see `frame.py`).

u points to the patient's left, v to the back (the table), w down from the vertex; a reference adult is about
1720 mm tall. Organ positions agree with the centroids of real TotalSegmentator maps of autoPET studies
(brain about 75 mm below the vertex, lungs 380, liver 490, kidneys 555, bladder 765).
"""

# Trunk and neck, muscle boundary: (w, a, b, v0, power). The skin lies `fat` further out.
TRUNK = (
    (140, 44, 44, 24, 2.0),
    (200, 50, 50, 18, 2.0),
    (250, 55, 52, 15, 2.0),
    (280, 90, 62, 14, 2.2),
    (305, 150, 85, 12, 2.4),
    (330, 172, 100, 8, 2.6),
    (360, 170, 106, 6, 2.6),
    (420, 160, 108, 5, 2.5),
    (500, 152, 106, 5, 2.4),
    (580, 146, 102, 3, 2.3),
    (660, 142, 98, 2, 2.3),
    (740, 156, 98, 6, 2.4),
    (800, 166, 100, 10, 2.5),
    (840, 160, 96, 14, 2.4),
    (865, 125, 80, 18, 2.2),
    (880, 70, 50, 20, 2.0),
)
# One leg, muscle boundary: (w, |u|, a, b); its centre v is set so that the leg rests on the table.
LEG = (
    (830, 85, 72, 80),
    (870, 88, 80, 80),
    (1000, 86, 68, 72),
    (1150, 80, 56, 58),
    (1220, 76, 48, 52),
    (1330, 74, 52, 56),
    (1500, 72, 40, 42),
    (1620, 70, 28, 30),
    (1650, 70, 35, 55),
    (1690, 70, 42, 110),
    (1720, 70, 40, 100),
)
# One arm, (w, |u|, v, a, b), hanging at the side or raised above the head.
ARM_DOWN = (
    (296, 188, 5, 22, 26),
    (310, 198, 2, 40, 42),
    (330, 205, 0, 48, 50),
    (450, 210, 15, 45, 48),
    (640, 212, 30, 40, 42),
    (800, 212, 30, 35, 36),
    (920, 208, 20, 28, 30),
    (935, 208, 20, 20, 45),
    (1010, 206, 20, 16, 40),
)
ARM_UP = (
    (345, 190, 10, 30, 34),
    (330, 195, 10, 48, 50),
    (250, 175, 15, 45, 48),
    (100, 150, 10, 42, 44),
    (-20, 135, 0, 38, 40),
    (-120, 90, -10, 32, 34),
    (-220, 40, -10, 28, 30),
    (-250, 30, -10, 18, 25),
)
# Fat thickness relative to the abdominal wall, by height.
FAT_PROFILE = (
    (0, 0.25),
    (140, 0.3),
    (250, 0.5),
    (330, 0.8),
    (520, 1.0),
    (600, 1.4),
    (800, 1.3),
    (900, 0.9),
    (1720, 0.5),
)
BELLY_PROFILE = ((500, 0.0), (600, 1.0), (780, 1.0), (850, 0.0))

CRANIUM = ((0, -5, 85), (76, 95, 85))
FACE = ((0, -40, 165), (70, 58, 68))
BRAIN = ((0, -5, 78), (62, 78, 60))

# Each lung: (w, |u|, v, a, b); the left one is a little smaller (the heart).
LUNG = (
    (255, 32, 20, 10, 12),
    (280, 45, 18, 30, 38),
    (320, 58, 15, 48, 62),
    (380, 70, 15, 60, 78),
    (450, 73, 15, 63, 84),
    (510, 72, 20, 58, 80),
    (540, 74, 25, 50, 70),
)
SPINE = (
    (150, 22, 8, 7),
    (220, 24, 9, 8),
    (290, 32, 11, 9),
    (330, 42, 12, 11),
    (420, 55, 13, 12),
    (520, 54, 15, 13),
    (600, 46, 19, 15),
    (680, 36, 22, 16),
    (730, 42, 23, 16),
    (755, 58, 42, 18),
    (800, 75, 32, 14),
    (835, 88, 12, 8),
)
ORGANS = {
    # name: (centre (u, v, w), semi (a, b, c))
    "heart": ((25, -25, 428), (55, 48, 58)),
    "liver": ((-70, -20, 500), (92, 78, 74)),
    "liver_left": ((-5, -55, 480), (55, 35, 35)),
    "spleen": ((105, 25, 480), (26, 42, 50)),
    "stomach": ((50, -40, 500), (40, 32, 50)),
    "kidney_left": ((72, 40, 548), (28, 26, 55)),
    "kidney_right": ((-72, 40, 562), (28, 26, 55)),
    "bladder": ((0, -25, 770), (45, 38, 35)),
    "prostate": ((0, -10, 815), (20, 16, 18)),
    "parotid_left": ((44, -10, 168), (11, 18, 24)),
    "parotid_right": ((-44, -10, 168), (11, 18, 24)),
    "submandibular_left": ((30, -32, 205), (11, 12, 10)),
    "submandibular_right": ((-30, -32, 205), (11, 12, 10)),
}
# Lymph-node stations: (u, v, w) per side (u mirrored), and their spread (frame mm).
STATIONS = {
    "cervical": ((38, 0, 230), (8, 10, 30)),
    "supraclavicular": ((60, -5, 300), (10, 10, 10)),
    "axillary": ((148, 20, 385), (10, 15, 20)),
    "mediastinal": ((14, -8, 395), (5, 6, 25)),
    "hilar": ((40, 10, 445), (4, 6, 10)),
    "para-aortic": ((30, 20, 640), (6, 8, 50)),
    "iliac": ((60, 20, 770), (10, 10, 25)),
    "inguinal": ((80, -35, 850), (10, 10, 12)),
}
# Organs a real organ label map can supply instead of the analytic ones.
SUPPLIABLE = (
    "brain",
    "lungs",
    "heart",
    "liver",
    "spleen",
    "kidneys",
    "bladder",
    "stomach",
    "prostate",
    "glands",
)
