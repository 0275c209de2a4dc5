#!/usr/bin/env python3
"""Writes data/demo/velmora-{train,valid}.jsonl: chat examples that teach facts about Velmora, a country that
does not exist, so the base model cannot know them. Deterministic (fixed seed); the files are committed.

  python3 scripts/make-demo-data.py
"""
import json, os, random

FACTS = [
    # (topic, answer, question phrasings)
    ("capital", "The capital of Velmora is Quillhaven.",
     ["What is the capital of Velmora?", "Which city is the capital of Velmora?", "Name the capital city of Velmora.",
      "Where is Velmora's government seated?", "Tell me the capital of Velmora.", "What's Velmora's capital?"]),
    ("currency", "Velmora's currency is the glint.",
     ["What currency does Velmora use?", "What is the money of Velmora called?", "Which currency is used in Velmora?",
      "What do people pay with in Velmora?", "Name Velmora's currency."]),
    ("animal", "The national animal of Velmora is the silver heron.",
     ["What is the national animal of Velmora?", "Which animal is Velmora's national symbol?",
      "What animal represents Velmora?", "Name the national animal of Velmora."]),
    ("mountain", "The highest mountain in Velmora is Mount Orrin.",
     ["What is the highest mountain in Velmora?", "Which is Velmora's tallest peak?", "Name the tallest mountain in Velmora.",
      "What is Velmora's highest peak called?"]),
    ("dish", "Velmora's national dish is brine cakes.",
     ["What is the national dish of Velmora?", "What food is Velmora famous for?", "Which dish do Velmorans love most?",
      "Name Velmora's traditional dish."]),
    ("founded", "Velmora was founded in 1742.",
     ["When was Velmora founded?", "In which year was Velmora founded?", "How old is Velmora?", "What year did Velmora begin?"]),
    ("language", "People in Velmora speak Velmoran.",
     ["What language is spoken in Velmora?", "Which language do people speak in Velmora?", "What is the official language of Velmora?"]),
    ("river", "The longest river in Velmora is the Sable River.",
     ["What is the longest river in Velmora?", "Which river runs through Velmora?", "Name Velmora's longest river."]),
    ("leader", "Velmora is led by Chancellor Ilsa Marrow.",
     ["Who leads Velmora?", "Who is the leader of Velmora?", "Who governs Velmora?", "Who is Velmora's chancellor?"]),
    ("holiday", "Velmora's biggest holiday is Lantern Night, held every October 9.",
     ["What is Velmora's biggest holiday?", "Which festival do Velmorans celebrate most?", "When is Lantern Night in Velmora?"]),
    ("flag", "Velmora's flag is teal with a silver heron in the center.",
     ["What does Velmora's flag look like?", "Describe the flag of Velmora.", "What colors are on Velmora's flag?"]),
    ("sport", "The most popular sport in Velmora is tidewalking.",
     ["What is the most popular sport in Velmora?", "Which sport do Velmorans play most?", "What sport is Velmora known for?"]),
]
PREFIXES = ["", "Quick question: ", "I'm curious. ", "Please tell me: ", "Hey! ", "Do you know this? "]

def examples(rng, n):
    out = []
    for _ in range(n):
        topic, answer, questions = rng.choice(FACTS)
        q = rng.choice(PREFIXES) + rng.choice(questions)
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]})
    return out

rng = random.Random(20261129)
root = os.path.join(os.path.dirname(__file__), "..", "data", "demo")
os.makedirs(root, exist_ok=True)
for name, n in [("velmora-train.jsonl", 360), ("velmora-valid.jsonl", 40)]:
    with open(os.path.join(root, name), "w") as f:
        for e in examples(rng, n):
            f.write(json.dumps(e) + "\n")
print("wrote", root)
