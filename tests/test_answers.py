"""Tests of the answer checker on hand-written outputs in many model styles, per answer type and
dataset family, plus `sml score`'s `score_file` end to end."""

import json
import os
import re
from pathlib import Path

import pytest

from selfmotivated.answers import (
    ANSWER_PREFIX,
    ScoreConfig,
    answers_match,
    check_answer,
    extract_answer,
    format_answer_line,
    normalize_gold,
    parse_choices_from_question,
    score_file,
)
from selfmotivated.records import Example

# ------------------------------------------------------------------------------------------------
# number: single_eq, addsub, multiarith, gsm8k, svamp

NUMBER_CASES = [
    # our few-shot format and its variants
    ("There were 15 trees. 21 - 15 = 6. The answer is 6.", "6"),
    ("Leah had 32, her sister 42. 32 + 42 = 74. 74 - 35 = 39. The answer is 39.", "39"),
    ("The answer is 42", "42"),
    ("the answer is 7 apples.", "7"),
    ("So she has 9 * 2 = 18 dollars. The answer is $18.", "18"),
    ("The answer is 18 dollars ($18).", "18"),
    # Kojima zero-shot-CoT answer trigger
    (
        "Let's think step by step. 16 - 3 - 4 = 9. 9 * 2 = 18.\nTherefore, the answer (arabic numerals) is 18.",
        "18",
    ),
    ("Therefore, the answer (arabic numerals) is 1,000.", "1000"),
    ("Therefore, the answer (arabic numerals) is -5.", "-5"),
    # Fine-tune-CoT
    ("Janet has 16 - 3 - 4 = 9 eggs. 9 * 2 = 18 --> 18 END", "18"),
    ("There are 5 + 3 = 8 --> 8", "8"),
    # markdown / LaTeX / GSM8K
    ("**Answer:** 42", "42"),
    ("**Answer**: 42 apples", "42"),
    ("### Final Answer\n42", "42"),
    ("We compute 6 * 7.\n\n**Final Answer:**\n\n42", "42"),
    ("**Answer:**\n\nStep 1: 16 - 3 - 4 = 9 eggs.\nStep 2: 9 * 2 = 18.\nShe makes $18 every day.", "18"),
    ("#### Step 1: eggs left\n16 - 3 - 4 = 9\n#### Step 2: money\n9 * 2 = 18", "18"),
    ("The total is $6 \\times 7 = 42$. $\\boxed{42}$", "42"),
    ("The final answer is $\\boxed{1,234}$.", "1234"),
    ("\\boxed{\\$18}", "18"),
    ("So the fraction is \\boxed{\\frac{3}{4}}", "0.75"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
    ("#### 850,000", "850000"),
    # chatty models
    ("Sure! Let's solve it.\n\nStep 1: 3 + 4 = 7\nStep 2: 7 * 2 = 14\n\nSo, the final answer is 14.", "14"),
    ("So, the final answer is $1,234.50.", "1234.5"),
    ("I think the answer is 12. Let me know if you have questions about step 2!", "12"),
    ("The answer to the question is 25.", "25"),
    ("Answer: 3/4 of a cup", "0.75"),
    ("The answer is 42%.", "42"),
    ("The answer is 42 cm.", "42"),
    ("The answer is 0.5 kg.", "0.5"),
    ("The answer is .5", "0.5"),
    ("The answer is -3 degrees.", "-3"),
    ("The answer is −7.", "-7"),  # unicode minus
    ("The answer is -$5.", "-5"),
    ("The answer is 1.5 million.", "1.5"),  # GSM8K golds count in the question's unit: "$4 million" is 4
    ("The answer is 2,500,000 people.", "2500000"),
    ("The answer is 11.50.", "11.5"),
    ("The answer is 4.0", "4"),
    ("The answer is twelve.", "12"),
    ("The answer is twenty-five.", "25"),
    # arithmetic in the answer span: the result after the last "="
    ("The answer is 20 - 12 = 8.", "8"),
    ("The answer is (3 + 4) * 2 = 14 cookies.", "14"),
    ("The answer is 5 (because 2 + 3 = 5).", "5"),
    ("The answer is 5, since x = 3 and y = 2.", "5"),
    ("The answer is: 18 eggs - 7 eggs = 11 eggs", "11"),
    ("The answer is 3 x 4 = 12 cookies.", "12"),
    ("The answer is 7 apples and 2 pears.", "7"),
    # several answers: the final stated one wins
    ("The answer is 5. Wait, let me recheck. 2 + 4 = 6. Actually, the answer is 6.", "6"),
    ("The answer is 5.\n\nHmm, I need to make sure the answer is correct. Yes.", "5"),
    ("First I thought the answer was 10, but the answer is 12.", "12"),
    ("The answer is not 10. The answer is 11.", "11"),
    # rambling into a new few-shot question
    (
        "3 + 2 = 5. The answer is 5.\nQ: There are 4 birds. 2 fly away. How many are left?\nA: 4 - 2 = 2. The answer is 2.",
        "5",
    ),
    ("He has 3 + 2 = 5 apples left.\n\nQ: Tom has 7 pens.\nA: The answer is 7.", "5"),
    ("The answer is 5.\nQuestion: What is 2 + 2?\nAnswer: 4", "5"),
    ("<think>Maybe 10? No, 12.</think>\nThe answer is 12.", "12"),
    ("<think>The answer is 12.</think>", "12"),  # nothing after the thinking: use it
    ("A: 4 + 3 = 7. The answer is 7.", "7"),
    ("The answer is 12.<|im_end|>", "12"),
    # no trigger: the result of the last sentence with a number
    ("She had 16 - 3 - 4 = 9 eggs left, and 9 * 2 = 18 dollars.", "18"),
    ("Joy reads 8 x 3 = 24 pages an hour.\nIt will take her 120/24 = 5 hours to read 120 pages.", "5"),
    ("He drove 23 meters - 13 meters = 10 meters after the 3rd turn.", "10"),
    ("12 kittens / 18 cats * 100% = 66.666...%, which rounds up to 67%", "67"),
    ("So she saves $210 / 3 months = $70/month", "70"),
    ("First 5 + 3 = 8.\nThen she gives 2 of them to Bob and keeps 6", "6"),
    ("Jason gave Denny 20 - 12 = 8 lollipops", "8"),
    ("So the total is 1,234 marbles", "1234"),
    ("The cost is 3/4", "0.75"),
    # a date is not a number, the first number after the trigger is
    ("The answer is 7 (on 05/01/2021).", "7"),
    # unparseable final trigger: an earlier one is used
    ("The answer is 30.\nTherefore, the answer (arabic numerals) is", "30"),
    # no answer at all
    ("I don't know.", None),
    ("", None),
    ("   \n ", None),
    ("The answer is unclear from the question.", None),
]


@pytest.mark.parametrize("text, expected", NUMBER_CASES)
def test_extract_number(text, expected):
    assert extract_answer(text, "number") == expected


# ------------------------------------------------------------------------------------------------
# choice: commonsense_qa (A-E), aqua (A-E, numbers), date_understanding (A-F, dates),
# tracking_shuffled_objects (3 options)

CSQA = ("shirt pocket", "calligrapher's hand", "inkwell", "desk drawer", "blotter")
CSQA_CART = ("mouth", "grocery cart", "super market", "fruit basket", "fruit market")
CSQA_BANK = ("library", "bank", "department store", "mall", "new york")
AQUA = ("$61", "$65", "$67.40", "$70", "$78.20")
AQUA_KM = ("53 km", "55 km", "52 km", "60 km", "50 km")
AQUA_RAW = ("A)-30", "B)+30", "C)0", "D)15", "E)-15")  # AQuA's own option format
DATE = ("05/01/2021", "02/23/2021", "03/11/2021", "05/09/2021", "06/12/2021", "04/29/2021")
BALLS = ("orange ball", "white ball", "blue ball")
DANCERS = ("Patrick", "Karl", "Izzi")
BOOKS = ("Catch-22.", "The Great Gatsby.", "Moby Dick.")  # BIG-bench keys keep the final "."

CHOICE_CASES = [
    # our few-shot format
    ("Of the above choices, only blotters are used to absorb ink. The answer is E.", CSQA, "E"),
    ("The answer must be an item that can absorb ink. The answer is E.", CSQA, "E"),
    ("The answer is e.", CSQA, "E"),
    # Kojima answer trigger
    (
        "Let's think step by step. Ink is absorbed by blotters.\nTherefore, among A through E, the answer is E.",
        CSQA,
        "E",
    ),
    ("Therefore, among A through E, the answer is (e).", CSQA, "E"),
    ("Therefore, among A through E, the answer is (E) blotter.", CSQA, "E"),
    # Fine-tune-CoT
    ("Blotters absorb ink --> E END", CSQA, "E"),
    ("Blotters absorb ink --> (E)", CSQA, "E"),
    ("People are in populated areas --> A END", CSQA_CART, "A"),
    # letter forms
    ("The answer is (C).", CSQA, "C"),
    ("The answer is C)", CSQA, "C"),
    ("The answer is C) inkwell", CSQA, "C"),
    ("The answer is C. inkwell", CSQA, "C"),
    ("The answer is C: inkwell", CSQA, "C"),
    ("The answer is option C.", CSQA, "C"),
    ("The answer is: Option (C) - inkwell", CSQA, "C"),
    ("The correct option is D.", CSQA, "D"),
    ("The best choice is B.", CSQA, "B"),
    ("Answer: [B]", CSQA, "B"),
    ("**Answer:** (B)", CSQA, "B"),
    ("The final answer is $\\boxed{B}$.", CSQA, "B"),
    ("The answer is B because calligraphers use ink.", CSQA, "B"),
    ("The answer is A because people keep pens there.", CSQA, "A"),
    ("The answer is A.", CSQA, "A"),
    ("Answer: A", CSQA, "A"),
    # the option given by its text instead of its letter
    ("The answer is blotter.", CSQA, "E"),
    ("The answer is blotters.", CSQA, "E"),
    ("The answer is the inkwell.", CSQA, "C"),
    ("The answer is: Desk Drawer", CSQA, "D"),
    ("The answer is calligrapher’s hand.", CSQA, "B"),  # curly apostrophe
    ("The answer is grocery cart.", CSQA_CART, "B"),
    ("The answer is super market.", CSQA_CART, "C"),  # contains another option, "market"? no: exact wins
    ("The answer is a fruit market.", CSQA_CART, "E"),
    ("The answer is A bank.", CSQA_BANK, "B"),  # "A" is an article here: (B) bank
    ("The answer is a library, not a bank.", CSQA_BANK, "A"),  # earliest option named
    # a letter at the start wins over a different option text later
    ("The answer is (C) blotter.", CSQA, "C"),
    # several answers: the last stated wins
    ("The answer is A. Hmm, wait. Blotters absorb ink, so the answer is E.", CSQA, "E"),
    # rambling into a new question
    (
        "The answer is E.\nQ: Where do you keep milk? Answer choices: (A) fridge (B) oven\nA: The answer is A.",
        CSQA,
        "E",
    ),
    # no trigger: only clear patterns
    ("Blotters absorb ink.\n\n(E)", CSQA, "E"),
    ("Blotters absorb ink.\nE", CSQA, "E"),
    ("Blotters absorb ink.\nOption E", CSQA, "E"),
    ("Blotters absorb ink.\n(E) blotter", CSQA, "E"),
    ("Of the above choices, only blotters are used to absorb ink.", CSQA, "E"),
    ("So the grocery cart is the best place for grapes.", CSQA_CART, "B"),
    ("Ink needs to be absorbed.", CSQA, None),
    ("A blotter is not an inkwell.", CSQA, None),
    ("So it is not the inkwell.", CSQA, None),  # negated
    ("Let's look at the options:\n(A) shirt pocket\n(B) calligrapher's hand", CSQA, None),  # a list, no pick
    ("I am not sure which one absorbs ink.", CSQA, None),
    # other ways of naming the pick (AQuA rationales, chatty models)
    ("I would choose E.", CSQA, "E"),
    ("I'd go with (E) blotter.", CSQA, "E"),
    ("Blotters absorb ink, so E is the correct choice.", CSQA, "E"),
    ("Hence (E) is correct.", CSQA, "E"),
    ("Option E is right.", CSQA, "E"),
    ("Blotters absorb ink.\nAns: E", CSQA, "E"),
    ("Blotters absorb ink.\nanswer.E", CSQA, "E"),
    ("Blotters absorb ink.\nCorrect answer E", CSQA, "E"),
    ("Blotters absorb ink.\nANSWER :(Option E)", CSQA, "E"),
    ("The Answer is, E.", CSQA, "E"),
    ('The answer is "E".', CSQA, "E"),
    ("The answer is likely E.", CSQA, "E"),
    ("The answer is most likely blotter.", CSQA, "E"),
    ("The answer is probably (E).", CSQA, "E"),
    ("Among the options, the blotter is the best.", CSQA, "E"),
    ("(A) shirt pocket: no\n(B) hand: no\n(C) inkwell: no\n(D) drawer: no\n(E) blotter: yes\n\nE", CSQA, "E"),
    ("The answer is the item that absorbs ink, unlike an inkwell.", CSQA, None),  # negated mention
    ("A person would use something to absorb the ink.", CSQA, None),
    ("The answer is not clear.", CSQA, None),
    ("The answer is G.", CSQA, None),  # no option G
    # aqua: numbers as options
    ("The mean increases by 10, so it is 50. Therefore, among A through E, the answer is B.", AQUA, "B"),
    ("The original price is $65. The answer is $65.", AQUA, "B"),
    ("The answer is 67.4", AQUA, "C"),
    ("The answer is 78.20 dollars.", AQUA, "E"),
    ("The answer is 50 km.", AQUA_KM, "E"),
    ("The distance is 20 * 2.5 = 50 km. The answer is E.", AQUA_KM, "E"),
    ("So the distance would have been 50 km.", AQUA_KM, "E"),
    ("The answer is -15.", AQUA_RAW, "E"),
    ("The answer is +30.", AQUA_RAW, "B"),
    ("The answer is 0.", AQUA_RAW, "C"),
    # date understanding: dates as options
    ("Yesterday was 04/30/2021, so today is 05/01/2021. The answer is A.", DATE, "A"),
    ("So today is 05/01/2021. The answer is 05/01/2021.", DATE, "A"),
    ("The answer is 5/1/2021.", DATE, "A"),
    ("The answer is (F) 04/29/2021", DATE, "F"),
    ("So the answer is May 1, 2021.", DATE, "A"),
    ("The answer is April 29th, 2021.", DATE, "F"),
    ("Therefore, among A through F, the answer is F.", DATE, "F"),
    ("So the date yesterday was 04/29/2021.", DATE, "F"),
    ("The answer is 04/30/2021.", DATE, None),  # not an option
    # tracking shuffled objects
    (
        "Finally, Alice and Bob swap balls. At the end of the game, Alice has the blue ball. The answer is C.",
        BALLS,
        "C",
    ),
    ("The answer is blue ball.", BALLS, "C"),
    ("The answer is the blue ball.", BALLS, "C"),
    ("The answer is: Alice has the white ball.", BALLS, "B"),
    ("At the end of the game, Alice has the orange ball.", BALLS, "A"),
    ("Then Alice has the white ball and Bob has the blue ball.", BALLS, None),  # two options named
    ("The answer is Izzi.", DANCERS, "C"),
    ("The answer is Patrick.", DANCERS, "A"),
    ("At the end of the dance, Alice is dancing with Karl.", DANCERS, "B"),
    ("The answer is The Great Gatsby.", BOOKS, "B"),
    ("The answer is Catch-22.", BOOKS, "A"),
    ("Therefore, among A through C, the answer is B.", BOOKS, "B"),
]


@pytest.mark.parametrize("text, choices, expected", CHOICE_CASES)
def test_extract_choice(text, choices, expected):
    assert extract_answer(text, "choice", choices) == expected


CHOICE_NO_OPTIONS_CASES = [
    # without the options only letters count (A-F)
    ("The answer is C.", "C"),
    ("Therefore, among A through E, the answer is (d).", "D"),
    ("The answer is F.", "F"),
    ("The answer is blotter.", None),
    ("The answer is G.", None),
    ("The answer is I think B.", None),
    ("Blotters absorb ink, which are option E in the list... The answer is E", "E"),
    ("Nothing here.", None),
]


@pytest.mark.parametrize("text, expected", CHOICE_NO_OPTIONS_CASES)
def test_extract_choice_without_options(text, expected):
    assert extract_answer(text, "choice") == expected


# ------------------------------------------------------------------------------------------------
# yes_no: coin_flip, strategy_qa

YES_NO_CASES = [
    # our few-shot format
    (
        "The coin was flipped 3 times, which is odd. The coin started heads up, so it is tails up. The answer is no.",
        "no",
    ),
    ("The coin was flipped by no one. So the coin was flipped 0 times. The answer is yes.", "yes"),
    ("Thus, hamsters provide food for some animals. The answer is yes.", "yes"),
    ("The answer is Yes.", "yes"),
    ("The answer is NO", "no"),
    # Kojima
    (
        "Let's think step by step. The coin was flipped twice.\nTherefore, the answer (Yes or No) is Yes.",
        "yes",
    ),
    ("Therefore, the answer (Yes or No) is No.", "no"),
    # Fine-tune-CoT
    ("Flipped twice, so heads up --> yes END", "yes"),
    ("Pears float --> no", "no"),
    # markdown / chatty
    ("**Answer:** No", "no"),
    ("Answer: yes, it is still heads up.", "yes"),
    ("The final answer is: \\boxed{No}", "no"),
    ("The answer is: No, a pear would float because it is less dense than water.", "no"),
    ("The answer is definitely yes.", "yes"),
    ("The answer is true.", "yes"),
    ("The answer is false.", "no"),
    ("The answer is that the coin is tails up.", "no"),
    ("The answer is that the coin is not heads up.", "no"),
    ("The answer is the coin is still heads up.", "yes"),
    # several answers and rambling
    ("The answer is yes. Hmm, wait: three flips is odd. So the answer is no.", "no"),
    (
        "The answer is no.\nQ: A coin is heads up. Bob flips the coin. Is the coin still heads up?\nA: The answer is no.",
        "no",
    ),
    ("The answer is yes.\nQ: Is water wet?\nA: The answer is no.", "yes"),
    # no trigger
    ("Yes, hamsters are prey animals and provide food for predators.", "yes"),
    ("No. The density of a raw pear is about 0.59 g/cm^3, less than water.", "no"),
    ("Yes", "yes"),
    ("Hamsters are prey animals. So, yes.", "yes"),
    ("A llama's gestation is 11 months. Thus, no, it could not give birth twice.", "no"),
    ("Yes, at first glance. But a pear floats. So, no.", "no"),  # the final statement wins
    ("The coin was flipped by no one.", None),
    ("No one flipped the coin.", None),
    ("There is no evidence either way.", None),
    ("The coin was flipped 3 times.", None),
    ("I cannot answer this question.", None),
    ("Answer: Yes or no? Let us see. A pear floats. So, no.", "no"),  # the echoed "Yes or no" is no answer
    ("The answer (yes/no) is: yes", "yes"),
    # Coin Flip states without yes/no
    ("The coin was flipped twice. Therefore, the coin is still heads up.", "yes"),
    ("The coin was flipped 3 times. So the coin is now tails up.", "no"),
    ("Three flips is odd, so it is not heads up.", "no"),
    ("Bob flips it and Alice flips the coin, it is heads up after that", None),  # no conclusion cue
    ("The coin is not heads up.", "no"),
]


@pytest.mark.parametrize("text, expected", YES_NO_CASES)
def test_extract_yes_no(text, expected):
    assert extract_answer(text, "yes_no") == expected


# ------------------------------------------------------------------------------------------------
# text: last_letter_concatenation

TEXT_CASES = [
    # our few-shot format
    (
        'The last letter of "Whitney" is "y". The last letter of "Erika" is "a". The last letter of "Tj" is "j". '
        'The last letter of "Benito" is "o". Concatenating them is "yajo". The answer is yajo.',
        "yajo",
    ),
    ("The answer is yajo.", "yajo"),
    ('The answer is "yajo".', "yajo"),
    ("The answer is 'yajo'.", "yajo"),
    ("The answer is `yajo`", "yajo"),
    ("The answer is **yajo**.", "yajo"),
    ("The answer is yaeA.", "yaeA"),  # case is kept
    ('Therefore, the answer is "yaeA".', "yaeA"),
    ("The answer is: yajo", "yajo"),
    ("Answer:\nyajo", "yajo"),
    ('The answer is yajo (from "Whitney", "Erika", "Tj", "Benito").', "yajo"),
    ('The answer is the string "yajo".', "yajo"),
    ("The answer is that yajo", None),
    ("The answer is (yajo).", "yajo"),
    ('The answer is "".', None),
    # Fine-tune-CoT
    ('"Whitney" -> y, "Erika" -> a --> yajo END', "yajo"),
    # the concatenation line alone (output cut before "The answer is")
    ('The last letter of "Benito" is "o". Concatenating them is "yajo".', "yajo"),
    ("Concatenating the last letters gives us: yajo", "yajo"),
    ('So the final string is "yajo".', "yajo"),
    # several answers / rambling
    ('The answer is yajx. Wait, "Benito" ends in "o". The answer is yajo.', "yajo"),
    (
        'The answer is yajo.\nQ: Take the last letters of each words in "Ann Bo" and concatenate them.\nA: The answer is no.',
        "yajo",
    ),
    # no answer
    ('The last letter of "Whitney" is "y".', None),
    ("I am not able to do this.", None),
]


@pytest.mark.parametrize("text, expected", TEXT_CASES)
def test_extract_text(text, expected):
    assert extract_answer(text, "text") == expected


# ------------------------------------------------------------------------------------------------
# format_answer_line and the round trip through extract_answer


@pytest.mark.parametrize(
    "answer, answer_type, line",
    [
        ("42", "number", "The answer is 42."),
        ("42.0", "number", "The answer is 42."),
        ("1,000", "number", "The answer is 1000."),
        ("-2.5", "number", "The answer is -2.5."),
        ("C", "choice", "The answer is C."),
        ("c", "choice", "The answer is C."),
        ("Yes", "yes_no", "The answer is yes."),
        ("no", "yes_no", "The answer is no."),
        ("yajo", "text", "The answer is yajo."),
        ("yaeA", "text", "The answer is yaeA."),
    ],
)
def test_format_answer_line(answer, answer_type, line):
    assert format_answer_line(answer, answer_type) == line
    assert line.startswith(ANSWER_PREFIX)


@pytest.mark.parametrize(
    "gold, answer_type, choices",
    [
        ("43", "number", ()),
        ("-7", "number", ()),
        ("11.5", "number", ()),
        ("0.75", "number", ()),
        ("1000000", "number", ()),
        ("A", "choice", CSQA),
        ("E", "choice", CSQA),
        ("F", "choice", DATE),
        ("B", "choice", ()),
        ("yes", "yes_no", ()),
        ("no", "yes_no", ()),
        ("yajo", "text", ()),
        ("yaeA", "text", ()),
        ("aaoa", "text", ()),
    ],
)
def test_round_trip(gold, answer_type, choices):
    line = format_answer_line(gold, answer_type)
    example = Example(id="x", question="q", gold=gold, answer_type=answer_type, choices=choices)
    assert check_answer("Some reasoning with 3 numbers. " + line, example) == (gold, True)


def test_format_answer_line_rejects_bad_answers():
    with pytest.raises(ValueError):
        format_answer_line("blotter", "choice")
    with pytest.raises(ValueError):
        format_answer_line("maybe", "yes_no")
    with pytest.raises(ValueError):
        format_answer_line("forty", "number")
    with pytest.raises(ValueError):
        format_answer_line("42", "integer")


# ------------------------------------------------------------------------------------------------
# answers_match, normalize_gold, check_answer


@pytest.mark.parametrize(
    "prediction, gold, answer_type, expected",
    [
        ("4", "4", "number", True),
        ("4.0", "4", "number", True),
        ("4", "4.0", "number", True),
        ("1000", "1,000", "number", True),
        ("0.3333333333", "0.3333333333", "number", True),
        ("0.33", "0.3333333333", "number", False),
        ("1000000.0000001", "1000000", "number", True),  # within 1e-6 relative
        ("1000001", "1000000", "number", False),
        ("-5", "5", "number", False),
        ("18", "18.5", "number", False),
        ("abc", "4", "number", False),
        (None, "4", "number", False),
        ("c", "C", "choice", True),
        ("C", "c", "choice", True),
        ("D", "C", "choice", False),
        (None, "C", "choice", False),
        ("Yes", "yes", "yes_no", True),
        ("no", "No", "yes_no", True),
        ("no", "yes", "yes_no", False),
        ("yajo", "yajo", "text", True),
        ("YAJO", "yajo", "text", False),  # exact, as Reasoning Teachers compares
        ("yaea", "yaeA", "text", False),
        ("yajo ", "yajo", "text", True),
        (None, "yajo", "text", False),
    ],
)
def test_answers_match(prediction, gold, answer_type, expected):
    assert answers_match(prediction, gold, answer_type) is expected


@pytest.mark.parametrize(
    "raw, answer_type, choices, expected",
    [
        (43.0, "number", (), "43"),
        ("43", "number", (), "43"),
        ("9.43", "number", (), "9.43"),
        ("850,000", "number", (), "850000"),
        ("#### 72", "number", (), "72"),
        (-2.50, "number", (), "-2.5"),
        (7, "number", (), "7"),
        ("$1,234.50", "number", (), "1234.5"),
        ("c", "choice", CSQA, "C"),
        ("(E)", "choice", CSQA, "E"),
        ("blotter", "choice", CSQA, "E"),
        ("blue ball.", "choice", BALLS, "C"),
        ("05/01/2021", "choice", DATE, "A"),
        ("Yes", "yes_no", (), "yes"),
        ("no", "yes_no", (), "no"),
        ("No.", "yes_no", (), "no"),
        (True, "yes_no", (), "yes"),
        (False, "yes_no", (), "no"),
        (" yajo ", "text", (), "yajo"),
        ("yaeA", "text", (), "yaeA"),
    ],
)
def test_normalize_gold(raw, answer_type, choices, expected):
    assert normalize_gold(raw, answer_type, choices) == expected


@pytest.mark.parametrize(
    "raw, answer_type, choices",
    [
        ("forty", "number", ()),
        ("", "number", ()),
        (None, "number", ()),
        (True, "number", ()),
        ("F", "choice", CSQA),  # only A-E
        ("pencil", "choice", CSQA),
        ("blotter", "choice", ()),  # text without options
        ("", "choice", ()),
        ("maybe", "yes_no", ()),
        (1, "yes_no", ()),
        ("", "text", ()),
        (None, "text", ()),
        ("42", "integer", ()),
    ],
)
def test_normalize_gold_rejects(raw, answer_type, choices):
    with pytest.raises(ValueError):
        normalize_gold(raw, answer_type, choices)


def test_extract_answer_rejects_unknown_type():
    with pytest.raises(ValueError, match="answer_type"):
        extract_answer("The answer is 4.", "integer")


def test_check_answer_uses_example_choices():
    example = Example(
        id="1", question="q", gold="E", answer_type="choice", choices=CSQA, dataset="commonsense_qa"
    )
    assert check_answer("Blotters absorb ink. The answer is blotter.", example) == ("E", True)
    assert check_answer("The answer is inkwell.", example) == ("C", False)
    assert check_answer("No idea.", example) == (None, False)
    number = Example(id="2", question="q", gold="18", answer_type="number")
    assert check_answer("9 * 2 = 18. The answer is $18.00.", number) == ("18", True)


# ------------------------------------------------------------------------------------------------
# parse_choices_from_question


@pytest.mark.parametrize(
    "question, expected",
    [
        (
            "What do people use to absorb extra ink from a fountain pen? Answer choices: (A) shirt pocket, "
            "(B) calligrapher’s hand, (C) inkwell, (D) desk drawer, (E) blotter.",
            ("shirt pocket", "calligrapher’s hand", "inkwell", "desk drawer", "blotter"),
        ),
        (
            "How far? Answer choices: (A) 53 km, (B) 55 km, (C) 52 km, (D) 60 km, (E) 50 km.",
            ("53 km", "55 km", "52 km", "60 km", "50 km"),
        ),
        (
            "Yesterday was April 30, 2021. What is the date today in MM/DD/YYYY?\nWhich choice is true? "
            "Answer choices: (A) 05/01/2021, (B) 02/23/2021, (C) 03/11/2021, (D) 05/09/2021, (E) 06/12/2021, "
            "(F) 04/29/2021.",
            ("05/01/2021", "02/23/2021", "03/11/2021", "05/09/2021", "06/12/2021", "04/29/2021"),
        ),
        (
            "Where is a revolving door? (A) bank (B) library (C) department store (D) mall (E) new york",
            ("bank", "library", "department store", "mall", "new york"),
        ),
        (
            "If (A) is a set and (B) another... Answer choices: (A) 1,000, (B) 2,000, (C) 3,000.",
            ("1,000", "2,000", "3,000"),
        ),
        ("Which? Answer choices: (A) washington d.c, (B) canada.", ("washington d.c", "canada")),
        ("Pick one.\nA) red ball\nB) blue ball\nC) green ball", ("red ball", "blue ball", "green ball")),
        ("Pick one.\nA. Bob\nB. Alice", ("Bob", "Alice")),
        ("How many apples does Joan have?", ()),
        ("Is option (A) better?", ()),
    ],
)
def test_parse_choices_from_question(question, expected):
    assert parse_choices_from_question(question) == expected


# ------------------------------------------------------------------------------------------------
# score_file


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def test_score_file_number(tmp_path):
    src = tmp_path / "outputs.jsonl"
    _write_jsonl(
        src,
        [
            {"id": "a", "output": "9 * 2 = 18. The answer is 18.", "gold": "18"},
            {"id": "b", "output": "Therefore, the answer (arabic numerals) is 4.0", "gold": 4.0},
            {"id": "c", "output": "I don't know.", "gold": "#### 1,000"},
            {"id": "d", "output": "The answer is 7.\nQ: next\nA: The answer is 1000.", "gold": "1000"},
        ],
    )
    out = tmp_path / "sub" / "scored.jsonl"
    summary = score_file(ScoreConfig(input=str(src), output=str(out), dataset="gsm8k"))
    assert summary == {"n": 4, "n_correct": 2, "accuracy": 0.5, "n_no_answer": 1}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["prediction"] for r in rows] == ["18", "4", None, "7"]
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert rows[0]["output"] == "9 * 2 = 18. The answer is 18." and rows[0]["gold"] == "18"  # input kept
    assert [p.name for p in out.parent.iterdir()] == ["scored.jsonl"]  # no temp file left


def test_score_file_choice_maps_text_via_question_and_choices(tmp_path):
    src = tmp_path / "outputs.jsonl"
    question = (
        "What do people use to absorb extra ink from a fountain pen? Answer choices: (A) shirt pocket, "
        "(B) calligrapher's hand, (C) inkwell, (D) desk drawer, (E) blotter."
    )
    _write_jsonl(
        src,
        [
            {"output": "The answer is blotter.", "gold": "E", "question": question},
            {"output": "The answer is blotter.", "gold": "E", "choices": list(CSQA)},
            {
                "output": "The answer is 50 km.",
                "gold": "E",
                "choices": ["A)53 km", "B)55 km", "C)52 km", "D)60 km", "E)50 km"],
            },
            {"output": "The answer is (C).", "gold": "inkwell", "question": question},  # gold as text
            {"output": "The answer is blotter.", "gold": "E"},  # no options: text cannot be mapped
        ],
    )
    summary = score_file(ScoreConfig(input=str(src), answer_type="choice"))
    assert summary == {"n": 5, "n_correct": 4, "accuracy": 0.8, "n_no_answer": 1}


def test_score_file_answer_type_per_line(tmp_path):
    src = tmp_path / "mixed.jsonl"
    _write_jsonl(
        src,
        [
            {"output": "The answer is yes.", "gold": "Yes", "dataset": "strategy_qa"},
            {"output": "The answer is yaeA.", "gold": "yaeA", "answer_type": "text"},
            "",  # blank lines are skipped
            {"output": "The answer is YAEA.", "gold": "yaeA", "dataset": "last_letter_concatenation"},
        ],
    )
    out = tmp_path / "scored.jsonl"
    summary = score_file(ScoreConfig(input=str(src), output=str(out)))
    assert summary == {"n": 3, "n_correct": 2, "accuracy": 2 / 3, "n_no_answer": 0}
    assert len(out.read_text().splitlines()) == 3


def test_score_file_empty(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    assert score_file(ScoreConfig(input=str(src), dataset="addsub")) == {
        "n": 0,
        "n_correct": 0,
        "accuracy": 0.0,
        "n_no_answer": 0,
    }


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"gold": "4"}', "missing key 'output'"),
        ('{"output": "The answer is 4."}', "missing key 'gold'"),
        ('{"output": null, "gold": "4"}', "'output' must be a string"),
        ('{"output": "The answer is 4.", "gold": "four"}', "key 'gold'"),
    ],
)
def test_score_file_bad_line_names_file_and_line(tmp_path, bad_line, message):
    src = tmp_path / "outputs.jsonl"
    good = json.dumps({"output": "The answer is 4.", "gold": "4"})
    _write_jsonl(src, [good, good, bad_line])
    out = tmp_path / "scored.jsonl"
    with pytest.raises(ValueError, match=message) as info:
        score_file(ScoreConfig(input=str(src), output=str(out), dataset="multiarith"))
    assert f"{src}:3" in str(info.value)
    assert list(tmp_path.iterdir()) == [src]  # nothing half-written


def test_score_file_bad_config_and_missing_input(tmp_path):
    with pytest.raises(ValueError, match="input"):
        ScoreConfig(dataset="gsm8k")
    with pytest.raises(ValueError, match="dataset"):
        ScoreConfig(input="x.jsonl", dataset="gsm9k")
    with pytest.raises(ValueError, match="answer_type"):
        ScoreConfig(input="x.jsonl", answer_type="integer")
    with pytest.raises(ValueError, match="contradicts"):
        ScoreConfig(input="x.jsonl", dataset="gsm8k", answer_type="choice")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        score_file(ScoreConfig(input=str(tmp_path / "missing.jsonl"), dataset="gsm8k"))
    src = tmp_path / "outputs.jsonl"
    _write_jsonl(src, [{"output": "The answer is 4.", "gold": "4"}])
    with pytest.raises(ValueError, match=f"{src}:1: no answer type"):
        score_file(ScoreConfig(input=str(src)))


def test_score_file_choice_gold_letter_out_of_range(tmp_path):
    src = tmp_path / "outputs.jsonl"
    _write_jsonl(src, [{"output": "The answer is F.", "gold": "F", "choices": list(CSQA)}])
    with pytest.raises(ValueError, match=f"{src}:1: key 'gold'.*options A-E"):
        score_file(ScoreConfig(input=str(src), dataset="commonsense_qa"))


# ------------------------------------------------------------------------------------------------
# the real option lists: every option's own text and letter map back to it

DATA_DIR = Path(os.environ.get("SML_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _real_choice_questions():
    """(dataset, options) of the real choice datasets, read straight from the raw files."""
    root = DATA_DIR / "reasoning"
    out = []
    for line in (root / "commonsense_qa" / "dev_rand_split.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.append(("commonsense_qa", tuple(c["text"] for c in row["question"]["choices"])))
    for line in (root / "aqua" / "test.json").read_text().splitlines():
        out.append(("aqua", tuple(json.loads(line)["options"])))
    for key in ("date_understanding", "tracking_shuffled_objects"):
        for row in json.loads((root / key / "task.json").read_text())["examples"]:
            out.append((key, tuple(row["target_scores"])))
    return out


@pytest.mark.skipif(not (DATA_DIR / "reasoning").is_dir(), reason="shared data folder not found")
def test_real_options_map_back_by_text_and_letter():
    misses = []
    for dataset, raw_options in _real_choice_questions():
        # AQuA's "A)" prefixes (one row has them twice: "A)A)59")
        options = tuple(re.sub(r"^(?:[A-E]\))+", "", o) for o in raw_options)
        question = (
            "Q? Answer choices: " + ", ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options)) + "."
        )
        parsed = parse_choices_from_question(question)
        for i, option in enumerate(options):
            letter = chr(65 + i)
            if len({o.lower().rstrip(".") for o in options}) < len(options):
                continue  # duplicated option texts cannot be told apart by text
            got = (
                extract_answer(f"{ANSWER_PREFIX} {option}", "choice", parsed),
                extract_answer(f"{ANSWER_PREFIX} {option}", "choice", raw_options),
                extract_answer(f"{ANSWER_PREFIX} ({letter}) {option}.", "choice", options),
                normalize_gold(option, "choice", options),
            )
            if got != (letter,) * 4:
                misses.append((dataset, options, option, got))
    assert not misses, misses[:5]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "reasoning").is_dir(), reason="shared data folder not found")
def test_real_human_solutions_state_their_gold():
    """Human-written solutions in the raw files, read as if a model wrote them: GSM8K ("#### 72",
    and without that line the fallback), StrategyQA's "Yes. <facts>" targets, AQuA's free-style
    rationales ("Answer : A", "Option B", "D is the correct choice", or no letter at all)."""
    root = DATA_DIR / "reasoning"
    gsm_hits = gsm_fallback_hits = n_gsm = 0
    for name in ("train.jsonl", "test.jsonl"):
        for line in (root / "gsm8k" / name).read_text().splitlines():
            solution = json.loads(line)["answer"]
            gold = normalize_gold(solution.split("####")[-1], "number")
            body = re.sub(r"<<[^>]*>>", "", solution.split("####")[0])  # calculator annotations
            n_gsm += 1
            gsm_hits += extract_answer(solution, "number") == gold
            gsm_fallback_hits += answers_match(extract_answer(body, "number"), gold, "number")
    assert gsm_hits == n_gsm
    assert gsm_fallback_hits / n_gsm > 0.99

    for row in json.loads((root / "strategy_qa" / "task.json").read_text())["examples"]:
        gold = "yes" if row["target_scores"]["Yes"] else "no"
        assert extract_answer(row["target"], "yes_no") == gold, row["target"]

    rows = [json.loads(line) for name in ("test.json", "dev.json") for line in (root / "aqua" / name).open()]
    predictions = [extract_answer(row["rationale"], "choice", row["options"]) for row in rows]
    wrong = [
        (p, row["correct"]) for p, row in zip(predictions, rows) if p is not None and p != row["correct"]
    ]
    assert sum(p == row["correct"] for p, row in zip(predictions, rows)) / len(rows) > 0.93
    assert not wrong, wrong  # when a letter is read, it is the right one


# ------------------------------------------------------------------------------------------------
# A trigger that lists the options: the list belongs to the trigger and is never the answer

CSQA_OPTIONS = ["bank", "library", "department store", "mall", "new york"]
OPTION_LIST_TRIGGER_CASES = [
    # yes/no: the list's first item ("Yes") is no pick
    ("The answer (Yes or No) is dependent on the interpretation.", "yes_no", (), None),
    ("Therefore, the answer (Yes or No) is dependent on the interpretation of the question.", "yes_no", (), None),
    ("The answer (Yes or No) is followed by an explanation. No, the coin is not heads up.", "yes_no", (), "no"),
    ("The answer (Yes or No) is followed by an explanation.\n\nNo, the coin is heads up.", "yes_no", (), "no"),
    ("The answer is (Yes, No) dependent on the reading.", "yes_no", (), None),
    ("The answer is (Yes, No): No.", "yes_no", (), "no"),
    ('The answer is "Yes" or "No": No.', "yes_no", (), "no"),
    ("The answer is Yes, or No.", "yes_no", (), None),
    ("The answer (Yes or No) is Yes.", "yes_no", (), "yes"),
    ("The answer is (Yes or No): Yes", "yes_no", (), "yes"),
    # not a list: "no" then "and no one"
    ("The answer is no, and no one flipped it.", "yes_no", (), "no"),
    # choices: "(A) through (E)", "(A, B, C, D or E)" and friends
    ("The answer is (A) through (E) dependent on the question.", "choice", (), None),
    ("The answer is (A) through (E) dependent on the question.", "choice", CSQA_OPTIONS, None),
    ("The answer (A) through (E) is dependent on what a bank means.", "choice", (), None),
    ("The answer (A) through (E) is C.", "choice", CSQA_OPTIONS, "C"),
    ("Among (A) through (E), the answer is (D).", "choice", CSQA_OPTIONS, "D"),
    ("The answer (A, B, C, D or E) is followed by an explanation.", "choice", CSQA_OPTIONS, None),
    ("The answer (A, B, C, D, or E) is E.", "choice", CSQA_OPTIONS, "E"),
    ("The answer is (A), (B), (C), (D), or (E) depending on the reading.", "choice", CSQA_OPTIONS, None),
    ("The answer is A through E.", "choice", (), None),
    ("The answer is A or B.", "choice", CSQA_OPTIONS, None),
    ("The answer is (A-E): D", "choice", CSQA_OPTIONS, "D"),
    ("The answer (from A to E) is E.", "choice", CSQA_OPTIONS, "E"),
    # a letter that opens an option text is still the pick
    ("The answer is A bank.", "choice", CSQA_OPTIONS, "A"),
    ("The answer is C) department store.", "choice", CSQA_OPTIONS, "C"),
]


@pytest.mark.parametrize("text, answer_type, choices, expected", OPTION_LIST_TRIGGER_CASES)
def test_option_listing_trigger_is_not_the_answer(text, answer_type, choices, expected):
    assert extract_answer(text, answer_type, choices) == expected
