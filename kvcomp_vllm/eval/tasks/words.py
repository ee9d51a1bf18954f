"""Word lists the task generators draw from (written for this project)."""

NAMES = [
    "Ada", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas", "Kira", "Lorenzo",
    "Mona", "Nils", "Olga", "Pablo", "Quentin", "Rosa", "Stefan", "Tamsin", "Ulrich", "Vera", "Walter", "Yara",
    "Zoltan", "Amara", "Basil", "Cosima", "Desmond", "Edith", "Florian", "Gwen", "Hector", "Ines", "Jasper",
    "Leona", "Magnus", "Nadia", "Oskar", "Petra", "Rupert", "Selma", "Tobias", "Ursula", "Viktor", "Wilma",
]
PETS = ["cat", "dog", "parrot", "horse", "goat", "tortoise", "rabbit", "canary", "pony", "ferret"]
PET_NAMES = [
    "Marigold", "Pickles", "Biscuit", "Juniper", "Waffles", "Pepper", "Clementine", "Noodle", "Saffron",
    "Truffle", "Bramble", "Dumpling", "Thistle", "Mango", "Sprocket", "Hazel", "Pumpkin", "Button", "Cinnamon",
    "Wobble", "Tango", "Nutmeg", "Pebble", "Fennel", "Rascal", "Puddle", "Crumpet", "Sorrel", "Toffee", "Zephyr",
]
ADJECTIVES = [
    "amber", "silver", "quiet", "hollow", "crimson", "gentle", "northern", "bitter", "golden", "velvet",
    "frozen", "hidden", "rusty", "bright", "distant", "ancient", "wild", "pale", "iron", "copper",
]
NOUNS = [
    "falcon", "lantern", "harbour", "meadow", "compass", "river", "anchor", "orchard", "tower", "willow",
    "bridge", "garden", "thistle", "beacon", "quarry", "glacier", "cellar", "market", "forge", "island",
]
CITIES = [
    "Lisbon", "Oslo", "Krakow", "Seville", "Ghent", "Turin", "Bergen", "Porto", "Lyon", "Graz", "Utrecht",
    "Tallinn", "Malmo", "Bruges", "Verona", "Aarhus", "Riga", "Cork", "Basel", "Split",
]
