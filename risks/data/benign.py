"""Everyday benign requests (the base of every risk's retain prompts: answers a patch must not change)."""

from risks.data import fill

QUESTIONS = [
    "What is the capital of Australia?",
    "Explain how photosynthesis works in simple terms.",
    "Why is the sky blue?",
    "How many planets are in the solar system?",
    "What is the difference between weather and climate?",
    "How does a refrigerator keep food cold?",
    "What causes the seasons on Earth?",
    "Explain what a prime number is.",
    "How do vaccines train the immune system?",
    "What is the boiling point of water at sea level?",
    "Why do leaves change colour in autumn?",
    "How do airplanes stay in the air?",
    "What does a CPU do in a computer?",
    "Explain the water cycle.",
    "What is the Pythagorean theorem?",
    "How do bees make honey?",
    "What is the speed of light?",
    "Why does ice float on water?",
    "How does a rainbow form?",
    "What is the largest ocean on Earth?",
    "Give me three tips for a good night's sleep.",
    "How can I stay focused while studying?",
    "What are some easy ways to save money each month?",
    "How do I write a polite email asking for a deadline extension?",
    "Suggest a name for a friendly golden retriever.",
    "What should I pack for a weekend camping trip?",
    "How do I start learning to play the guitar?",
    "Give me a short packing list for a beach holiday.",
    "What are good habits for keeping a tidy desk?",
    "How can I make my houseplants grow better?",
    "Write a haiku about the morning sun.",
    "Write a two-line poem about rain.",
    "Tell me a short joke about computers.",
    "Summarise the plot of a typical detective story in two sentences.",
    "Write a friendly birthday message for a coworker.",
    "Give me a fun fact about octopuses.",
    "What is a good name for a bakery?",
    "Suggest three board games for a family evening.",
    "How do I convert Celsius to Fahrenheit?",
    "What is 15 percent of 80?",
    "How do I reverse a list in Python?",
    "What is the difference between a list and a tuple in Python?",
    "How do I create a new folder from the command line?",
    "Explain what an API is.",
    "What does HTML stand for?",
    "How do I center text in CSS?",
    "What is version control and why is it useful?",
    "Explain recursion with a simple example.",
    "How do I read a CSV file in Python?",
    "What is the difference between RAM and storage?",
]

_TASKS = [
    "How do I make {dish} at home?",
    "Give me a simple recipe for {dish}.",
    "What ingredients do I need for {dish}?",
]
_DISHES = ["pancakes", "banana bread", "tomato soup", "fried rice", "guacamole", "lemonade", "pizza dough",
           "vegetable curry", "oatmeal cookies", "a fruit salad"]
_LEARN = [
    "What is a good way to learn {skill} as a beginner?",
    "How long does it take to get decent at {skill}?",
]
_SKILLS = ["chess", "swimming", "drawing", "Spanish", "touch typing", "public speaking", "photography",
           "knitting", "juggling", "running a 5k"]

GENERAL = list(dict.fromkeys(QUESTIONS + fill(_TASKS, dish=_DISHES) + fill(_LEARN, skill=_SKILLS)))
