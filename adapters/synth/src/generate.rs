//! The generator: a seed and a citizen count in, a whole synthetic municipality out.
//!
//! One ChaCha8 stream drives every choice in a fixed order, so a [`SynthConfig`] always yields
//! the same [`Dataset`]: no clock, no hash-map iteration. The steps:
//!
//! 1. **People**: ages drawn from Denmark's age pyramid, one synthetic CPR number each.
//! 2. **Profiles**: which plans each citizen holds. A `Profile` is a set of plans held at once
//!    by one citizen (same CPR) plus the age band that fits it; its count per 43,000 inhabitants
//!    reproduces the report's volumes and overlap (domain brief ch. 2, Figures 4 and 7).
//! 3. **Caseworkers**: per unit, as many as the unit's caseload needs.
//! 4. **Cases**: dates, texts, interventions and documents drawn from the text tables below.
//! 5. **Ids**: case ids numbered per department and year in order of opening, as a case system
//!    would have issued them.

use crate::model::{
    CaseRecord, CaseState, Caseworker, Citizen, Dataset, Department, Document, DocumentKind,
    FLAG_ADDRESS_PROTECTION, FLAG_HONOUR_RELATED_CONFLICT, FLAG_POLICE_INFORMATION, Goal,
    Intervention, Municipality, PlanType,
};
use chrono::{Datelike, Months, NaiveDate, TimeDelta};
use rand::seq::{IndexedRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use samblik_proto::Cpr;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use std::collections::{BTreeMap, HashSet};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    pub seed: u64,
    /// Number of inhabitants; about 16 % of them get at least one plan.
    pub citizens: usize,
    /// The data set's "today"; see [`Municipality::reference_date`].
    pub reference_date: NaiveDate,
}

impl SynthConfig {
    /// The default reference date, fixed so that a seed always yields the same data.
    pub const DEFAULT_REFERENCE_DATE: (i32, u32, u32) = (2026, 11, 1);

    pub fn new(seed: u64, citizens: usize) -> Self {
        let (y, m, d) = Self::DEFAULT_REFERENCE_DATE;
        SynthConfig {
            seed,
            citizens,
            reference_date: NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SynthError {
    #[error("--citizens must be at least {min}")]
    TooFewCitizens { min: usize },
    #[error(
        "the reference date {date} must lie in the years {first}–{last}, so that every birth date \
         can be written as a CPR number"
    )]
    ReferenceDateOutOfRange {
        date: NaiveDate,
        first: i32,
        last: i32,
    },
    #[error("no unused synthetic CPR number left for birth date {birth_date}")]
    CprSpaceExhausted { birth_date: NaiveDate },
    /// A bug in the generator's own text tables (a unit test parses them all).
    #[error("the generator's text tables are malformed at {line:?}")]
    MalformedTable { line: &'static str },
}

pub const MIN_CITIZENS: usize = 1;
/// Birth dates reach 96 years back; the CPR century rule covers 1858–2057.
const REFERENCE_YEARS: (i32, i32) = (1960, 2057);
/// The report's average municipality (42,813 inhabitants, rounded): profile counts are per this.
const REFERENCE_POPULATION: u64 = 43_000;

// ---------------------------------------------------------------------------------------------
// Population
// ---------------------------------------------------------------------------------------------

/// Five-year age bands (first age, last age, per mille), shaped like Statistics Denmark's
/// pyramid: about 21 % aged 0–17, the oldest 95.
#[rustfmt::skip]
const AGE_BANDS: [(u32, u32, u32); 19] = [
    (0, 4, 56), (5, 9, 58), (10, 14, 61), (15, 19, 62), (20, 24, 65), (25, 29, 67),
    (30, 34, 63), (35, 39, 58), (40, 44, 59), (45, 49, 64), (50, 54, 71), (55, 59, 68),
    (60, 64, 61), (65, 69, 55), (70, 74, 53), (75, 79, 46), (80, 84, 29), (85, 89, 15),
    (90, 95, 6),
];
const ADDRESS_PROTECTED_SHARE: f64 = 0.005;
/// Share of citizens without an integration contract who carry a name of non-Danish origin.
const NON_DANISH_NAME_SHARE: f64 = 0.08;
/// Retries before a birth date counts as full. A try fails modulus 11 with p = 10/11 and a date
/// has 2,000 sequence numbers per gender, so only absurd populations get here.
const CPR_ATTEMPTS: usize = 400;

#[rustfmt::skip]
const MALE_NAMES_OLDER: &[&str] = &[
    "Jens", "Peter", "Lars", "Henrik", "Søren", "Niels", "Jan", "Hans", "Jørgen", "Ole", "Bent",
    "Poul", "Erik", "Finn", "Torben", "Flemming", "Leif", "Preben", "Steen", "Palle", "Michael",
    "Thomas", "Morten", "Jesper", "Brian", "Claus", "Allan", "Carsten", "Kurt", "Bjarne",
];
#[rustfmt::skip]
const MALE_NAMES_YOUNGER: &[&str] = &[
    "Mads", "Rasmus", "Mikkel", "Frederik", "Mathias", "Jonas", "Emil", "Oliver", "William", "Noah",
    "Lucas", "Magnus", "Victor", "Carl", "Oscar", "Alfred", "Anton", "Kasper", "Simon", "Nikolaj",
    "Christian", "Martin", "Anders", "Tobias", "Sebastian", "Valdemar", "Malthe", "Aksel", "Elias",
    "August",
];
#[rustfmt::skip]
const FEMALE_NAMES_OLDER: &[&str] = &[
    "Kirsten", "Hanne", "Mette", "Helle", "Susanne", "Lene", "Marianne", "Lone", "Pia", "Tina",
    "Gitte", "Bente", "Inge", "Karen", "Birgitte", "Dorthe", "Ellen", "Jytte", "Grethe", "Lis",
    "Annette", "Charlotte", "Rikke", "Trine", "Anne", "Tove", "Vibeke", "Ulla", "Merete", "Conny",
];
#[rustfmt::skip]
const FEMALE_NAMES_YOUNGER: &[&str] = &[
    "Julie", "Emma", "Ida", "Sofie", "Freja", "Clara", "Laura", "Alma", "Ella", "Josefine", "Signe",
    "Cecilie", "Line", "Maja", "Katrine", "Astrid", "Nanna", "Camilla", "Louise", "Maria", "Sara",
    "Caroline", "Mathilde", "Anna", "Karla", "Agnes", "Olivia", "Emilie", "Frida", "Lærke",
];
#[rustfmt::skip]
const MALE_NAMES_NON_DANISH: &[&str] = &[
    "Ahmad", "Mohammed", "Ali", "Hussein", "Omar", "Yusuf", "Abdi", "Mahmoud", "Khaled", "Hassan",
    "Tesfay", "Dawit", "Samir", "Bilal", "Mustafa", "Ibrahim", "Rami", "Amanuel", "Yonas", "Karim",
];
#[rustfmt::skip]
const FEMALE_NAMES_NON_DANISH: &[&str] = &[
    "Fatima", "Amina", "Aisha", "Maryam", "Zainab", "Hodan", "Layla", "Nour", "Rania", "Huda",
    "Saba", "Selam", "Muna", "Asma", "Yasmin", "Hiwet", "Leila", "Rahel", "Dalia", "Semhar",
];
#[rustfmt::skip]
const SURNAMES_DANISH: &[&str] = &[
    "Jensen", "Nielsen", "Hansen", "Pedersen", "Andersen", "Christensen", "Larsen", "Sørensen",
    "Rasmussen", "Jørgensen", "Petersen", "Madsen", "Kristensen", "Olsen", "Thomsen",
    "Christiansen", "Poulsen", "Johansen", "Møller", "Mortensen", "Knudsen", "Jakobsen",
    "Mikkelsen", "Olesen", "Frederiksen", "Laursen", "Henriksen", "Lund", "Schmidt", "Holm",
    "Eriksen", "Kristiansen", "Nissen", "Clausen", "Simonsen", "Svendsen", "Andreasen", "Iversen",
    "Jeppesen", "Mogensen", "Jacobsen", "Dam", "Vestergaard", "Nørgaard", "Bech", "Kjær",
    "Lauridsen", "Bak", "Østergaard", "Dahl", "Skov", "Bang", "Friis", "Brandt", "Winther",
    "Lindberg", "Koch", "Hald", "Juhl", "Toft",
];
#[rustfmt::skip]
const SURNAMES_NON_DANISH: &[&str] = &[
    "Ahmad", "Hussein", "Mohammed", "Ali", "Abdi", "Yusuf", "Tesfay", "Haile", "Hassan", "Ibrahim",
    "Omar", "Mahmoud", "Al-Khatib", "Haddad", "Rahimi", "Hosseini", "Osman", "Warsame", "Berhane",
    "Kidane", "Nasser", "Abdullahi",
];

// ---------------------------------------------------------------------------------------------
// Profiles: who holds which plans
// ---------------------------------------------------------------------------------------------

/// Plans one citizen holds at once, and how many such citizens a municipality of 43,000 has.
#[derive(Debug)]
struct Profile {
    plans: &'static [PlanType],
    /// Age at the reference date, inclusive.
    ages: (u32, u32),
    per_reference: u64,
}

const fn profile(plans: &'static [PlanType], ages: (u32, u32), per_reference: u64) -> Profile {
    Profile {
        plans,
        ages,
        per_reference,
    }
}

use PlanType::{Il19, Lab27, Lab30a, Sl12a, Sl54, Sl57c, Sl140, Sl141};

/// Per 43,000 inhabitants the plans add up to the report's volumes (brief §2.2, Box 7):
/// 5,200 LAB-27, 750 LAB-30a, 375 SL-140, 225 SL-141, 225 IL-19, 35 SL-54, 30 SL-57c and one
/// SL-12a = 6,841. The 3 four-plan and 52 three-plan citizens hold 168 plans (2.5 %), the 310
/// two-plan citizens 620 more (together 11.5 %, the report's 9–12 %). Pairs follow Figures 4
/// and 7 where one CPR can hold both plans: a child's § 140 plan beside a parent's Min Plan is a
/// family-level overlap in the report but sits on two CPR numbers here. § 141 takes its
/// report's share of the overlap (with Min Plan above all), so the § 140 × Min Plan pairs give
/// some of theirs up to keep the total inside 9–12 %. LAB-27 × LAB-30a stays at 0 %, as in the
/// report. Multi-plan profiles come first so that their narrow age bands are not used up by
/// singles.
const PROFILES: &[Profile] = &[
    profile(&[Sl54, Sl141, Lab30a, Il19], (25, 55), 3),
    profile(&[Sl140, Sl57c, Lab27], (16, 17), 20),
    profile(&[Sl140, Lab30a, Il19], (18, 22), 20),
    profile(&[Sl54, Lab30a, Il19], (25, 55), 9),
    profile(&[Sl54, Lab27, Il19], (25, 55), 3),
    profile(&[Sl12a, Lab27], (18, 40), 1),
    profile(&[Sl140, Lab27], (16, 17), 55),
    profile(&[Sl140, Lab27], (18, 22), 55),
    profile(&[Sl140, Lab30a], (18, 22), 45),
    profile(&[Sl141, Lab27], (25, 64), 55),
    profile(&[Il19, Lab30a], (25, 55), 30),
    profile(&[Sl140, Il19], (18, 22), 25),
    profile(&[Sl141, Lab30a], (25, 64), 12),
    profile(&[Sl54, Lab27], (25, 55), 10),
    profile(&[Sl141, Il19], (25, 55), 8),
    profile(&[Sl140, Sl57c], (12, 17), 6),
    profile(&[Sl140, Sl141], (18, 22), 4),
    profile(&[Sl54, Il19], (25, 55), 2),
    profile(&[Sl54, Sl141], (25, 55), 2),
    profile(&[Sl54, Lab30a], (25, 55), 1),
    profile(&[Sl57c], (12, 17), 4),
    profile(&[Sl140], (18, 22), 26),
    profile(&[Sl140], (0, 17), 119),
    profile(&[Sl54], (25, 55), 5),
    profile(&[Sl141], (18, 66), 141),
    profile(&[Il19], (18, 55), 125),
    profile(&[Lab30a], (25, 64), 630),
    profile(&[Lab27], (16, 66), 5001),
];
/// Kept even where the population is too small for their counts to round to one: the demo
/// needs a citizen with cases in all four departments, and one honour-related-conflict case
/// (about 50 a year nationally, well under one in an average municipality) beside the
/// jobcenter, as the report describes it.
const ALWAYS_PRESENT: &[&[PlanType]] = &[&[Sl54, Sl141, Lab30a, Il19], &[Sl12a, Lab27]];

// ---------------------------------------------------------------------------------------------
// Organisation
// ---------------------------------------------------------------------------------------------

const UNIT_NORTH: usize = 0;
const UNIT_SOUTH: usize = 1;
const UNIT_YOUTH: usize = 2;
const UNIT_CASH: usize = 3;
const UNIT_SICKNESS: usize = 4;
const UNIT_JOB_YOUTH: usize = 5;
const UNIT_REHABILITATION: usize = 6;
const UNIT_INTEGRATION: usize = 7;
const UNIT_ADULT: usize = 8;
const UNIT_ADULT_COUNSELLING: usize = 9;

/// Units, grouped by department in [`Department::ALL`] order (caseworker ids count per
/// department in this order).
const UNITS: [(Department, &str); 10] = [
    (Department::ChildWelfare, "Børn og Familie – Myndighed Nord"),
    (Department::ChildWelfare, "Børn og Familie – Myndighed Syd"),
    (Department::ChildWelfare, "Ungeenheden"),
    (Department::Jobcenter, "Jobcenter – Kontanthjælp"),
    (Department::Jobcenter, "Jobcenter – Sygedagpenge"),
    (Department::Jobcenter, "Jobcenter – Ungeindsatsen"),
    (Department::Jobcenter, "Rehabiliteringsteamet"),
    (Department::Integration, "Integrationsteamet"),
    (Department::AdultSocial, "Voksen – Myndighed"),
    (Department::AdultSocial, "Voksen – Særlig rådgivning"),
];

/// Typical caseloads: a child-welfare case takes 37 hours of assessment, a Min Plan a few.
fn cases_per_caseworker(department: Department) -> usize {
    match department {
        Department::ChildWelfare => 25,
        Department::Jobcenter => 90,
        Department::Integration => 40,
        // A § 141 plan takes 6–10 hours of assessment and a yearly follow-up in person.
        Department::AdultSocial => 35,
    }
}

/// What kind of case a plan is for this citizen: decides the unit and the texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Sl54,
    Sl57c,
    Sl140Infant,
    Sl140Child,
    Sl140Aftercare,
    Lab27Youth,
    Lab27Cash,
    Lab27Sickness,
    Lab30a,
    Il19,
    Sl141,
    Sl12a,
}

impl Track {
    /// In declaration order, so that `track as usize` indexes [`Library::tracks`].
    const ALL: [Track; 12] = [
        Track::Sl54,
        Track::Sl57c,
        Track::Sl140Infant,
        Track::Sl140Child,
        Track::Sl140Aftercare,
        Track::Lab27Youth,
        Track::Lab27Cash,
        Track::Lab27Sickness,
        Track::Lab30a,
        Track::Il19,
        Track::Sl141,
        Track::Sl12a,
    ];

    fn of(rng: &mut ChaCha8Rng, plan: PlanType, age: u32) -> Track {
        match plan {
            Sl54 => Track::Sl54,
            Sl57c => Track::Sl57c,
            // Aftercare (efterværn) runs from 18 to 22.
            Sl140 if age >= 18 => Track::Sl140Aftercare,
            Sl140 if age < 6 => Track::Sl140Infant,
            Sl140 => Track::Sl140Child,
            Lab27 if age < 30 => Track::Lab27Youth,
            Lab27 if rng.random_bool(0.55) => Track::Lab27Cash,
            Lab27 => Track::Lab27Sickness,
            Lab30a => Track::Lab30a,
            Il19 => Track::Il19,
            Sl141 => Track::Sl141,
            Sl12a => Track::Sl12a,
        }
    }

    fn unit(self, rng: &mut ChaCha8Rng, age: u32) -> usize {
        match self {
            Track::Sl57c | Track::Sl140Aftercare => UNIT_YOUTH,
            Track::Sl140Child if age >= 15 => UNIT_YOUTH,
            // The district teams split families by address; a coin stands in for it.
            Track::Sl140Infant | Track::Sl140Child | Track::Sl54 if rng.random_bool(0.5) => {
                UNIT_NORTH
            }
            Track::Sl140Infant | Track::Sl140Child | Track::Sl54 => UNIT_SOUTH,
            Track::Lab27Youth => UNIT_JOB_YOUTH,
            Track::Lab27Cash => UNIT_CASH,
            Track::Lab27Sickness => UNIT_SICKNESS,
            Track::Lab30a => UNIT_REHABILITATION,
            Track::Il19 => UNIT_INTEGRATION,
            Track::Sl141 => UNIT_ADULT,
            Track::Sl12a => UNIT_ADULT_COUNSELLING,
        }
    }

    /// The text tables this track's cases draw from; sections of several tables add up.
    fn tables(self) -> &'static [&'static str] {
        match self {
            Track::Sl54 => &[SL54_TEXT],
            Track::Sl57c => &[SL57C_TEXT],
            Track::Sl140Infant => &[SL140_INFANT_TEXT, SL140_TEXT],
            Track::Sl140Child => &[SL140_CHILD_TEXT, SL140_TEXT],
            Track::Sl140Aftercare => &[SL140_AFTERCARE_TEXT],
            Track::Lab27Youth => &[LAB27_YOUTH_TEXT, LAB27_TEXT],
            Track::Lab27Cash => &[LAB27_CASH_TEXT, LAB27_TEXT],
            Track::Lab27Sickness => &[LAB27_SICKNESS_TEXT, LAB27_TEXT],
            Track::Lab30a => &[LAB30A_TEXT],
            Track::Il19 => &[IL19_TEXT],
            Track::Sl141 => &[SL141_TEXT],
            Track::Sl12a => &[SL12A_TEXT],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Case rules
// ---------------------------------------------------------------------------------------------

const OPEN_SHARE: f64 = 0.85;

/// Age limits at opening, how far back cases reach, and the follow-up rhythm (brief §2.4).
struct Rules {
    min_age: u32,
    max_age: u32,
    history_days: i64,
    first_follow_up: i64,
    cadence: (i64, i64),
}

fn rules(plan: PlanType) -> Rules {
    let r = |min_age, max_age, history_days, first_follow_up, cadence| Rules {
        min_age,
        max_age,
        history_days,
        first_follow_up,
        cadence,
    };
    match plan {
        // No statutory cadence; in practice every 6–12 months.
        Sl54 => r(18, 120, 1461, 182, (182, 365)),
        // Both: a meeting 3 months after the start, then every 6 months.
        Sl57c => r(12, 17, 730, 91, (182, 182)),
        Sl140 => r(0, 22, 1826, 91, (182, 182)),
        Lab27 => r(15, 120, 1095, 91, (91, 91)),
        // At least six follow-ups a year for the intervention part.
        Lab30a => r(18, 120, 1826, 61, (61, 61)),
        Il19 => r(18, 120, 1826, 91, (91, 91)),
        // No statutory cadence: first after 3–6 months, then in person once a year.
        Sl141 => r(18, 66, 1826, 137, (365, 365)),
        // Follow-up as needed; counselling stays close while the risk lasts.
        Sl12a => r(18, 120, 365, 30, (61, 91)),
    }
}

/// The documents a plan type's cases draw from (several tables add up).
fn document_tables(plan: PlanType) -> &'static [&'static str] {
    match plan {
        Sl54 => &[SL54_DOCUMENTS, SHARED_DOCUMENTS],
        Sl57c => &[CHILD_INVESTIGATION, SL57C_DOCUMENTS, SHARED_DOCUMENTS],
        Sl140 => &[CHILD_INVESTIGATION, SL140_DOCUMENTS, SHARED_DOCUMENTS],
        Lab27 => &[LAB27_DOCUMENTS],
        Lab30a => &[LAB30A_DOCUMENTS],
        Il19 => &[IL19_DOCUMENTS],
        Sl141 => &[SL141_DOCUMENTS],
        Sl12a => &[SL12A_DOCUMENTS],
    }
}

// ---------------------------------------------------------------------------------------------
// Text tables
//
// Kept as plain text so that someone who knows Danish casework can edit them. An unindented line
// starts a section, the indented lines under it are its items. Case texts have the sections
// `opening`, `detail`, `goal` and `assessment` (one sentence per item) and `intervention`
// (`paragraph | description | shortest-longest days | scope; … | provider; …`).
// Providers and places are fictitious.
// ---------------------------------------------------------------------------------------------

const SL54_TEXT: &str = "
opening
    Borgeren har forældremyndigheden over et barn, der er anbragt uden for hjemmet.
    Borgerens barn har været anbragt i plejefamilie siden sidste år.
    Borgerens barn er anbragt på opholdssted, og borgeren har takket ja til en støtteperson.
    Borgeren har forældremyndighed over to børn, hvoraf det yngste er anbragt i netværkspleje.
detail
    Samværet foregår hver anden weekend og har periodevis været præget af aflysninger.
    Borgeren ønsker at arbejde hen imod en hjemgivelse og er motiveret for støtte.
    Borgeren er i ambulant behandling i rusmiddelcentret.
    Samarbejdet med anbringelsesstedet er godt, men borgeren har svært ved at holde aftaler.
    Borgeren bor alene i egen lejlighed og har et begrænset netværk.
goal
    Borgeren deltager stabilt i de aftalte samvær med barnet.
    Borgeren samarbejder konstruktivt med anbringelsesstedet om barnets hverdag.
    Borgeren har opnået stabilitet i egen bolig og økonomi.
    Borgeren kan tage imod vejledning om barnets behov under samvær.
assessment
    Borgeren er motiveret og har overholdt de fleste samvær i perioden. Støtten fortsætter uændret.
    Støtten vurderes fortsat nødvendig for at fastholde en stabil kontakt til barnet.
    Der er sket en positiv udvikling, men en hjemgivelse er ikke aktuel inden for et år.
    Borgeren har svært ved at bruge støtten, og indsatsen drøftes ved næste opfølgning.
intervention
    Serviceloven § 54, stk. 1 | Støtteperson under barnets anbringelse | 180-730 | 4 timer om ugen; 2 timer om ugen; 6 timer om måneden | Støttepersonkorpset, Sønderå Kommune; Familierådgivning Syd ApS
    Serviceloven § 52, stk. 3, nr. 3 | Familiebehandling med fokus på samvær | 90-365 | 2 sessioner om måneden; 1 session om ugen | Familiehuset Sønderå
    Serviceloven § 101 | Ambulant stofmisbrugsbehandling | 90-365 | ugentlige samtaler | Rusmiddelcenter Sønderå
";

const SL57C_TEXT: &str = "
opening
    Den unge er sigtet for grov vold i forbindelse med en episode i nattelivet.
    Den unge er sigtet for flere indbrud og et røveri sammen med ældre kammerater.
    Politiet har underrettet kommunen om den unges gentagne sigtelser for personfarlig kriminalitet.
    Den unge er sigtet for besiddelse af kniv og trusler mod en medelev.
detail
    Den unge har højt fravær i skolen og færdes i et miljø med kriminelle relationer.
    Forældrene er bekymrede og ønsker hjælp til at sætte grænser.
    Sagen er drøftet i SSP-samarbejdet, og der er holdt familieinddragende netværksmøde.
    Den unge har tidligere haft en kontaktperson efter SL § 52, stk. 3, nr. 6.
    Den unge udtrykker selv ønske om at komme væk fra miljøet.
goal
    Den unge begår ikke ny kriminalitet i planperioden.
    Den unge møder stabilt i skole eller praktik.
    Den unge har en meningsfuld fritidsaktivitet uden for det kriminelle miljø.
    Den unge overholder vilkårene i ungdomskontrakten.
assessment
    Der er ikke registreret nye sigtelser siden planens start. Kontaktpersonordningen fortsætter.
    Den unge har fået en mere stabil skolegang, men er fortsat i risiko.
    Den unge er sigtet i en ny sag, og planen revideres.
intervention
    Serviceloven § 52, stk. 3, nr. 6 | Fast kontaktperson | 180-540 | 5 timer om ugen; 8 timer om ugen | Kontaktpersonkorpset, Sønderå Kommune; Ungdomsskolen Sønderå
    Serviceloven § 57 b | Ungdomskontrakt | 180-365 | kontrakt i 12 måneder; kontrakt i 6 måneder | Ungeenheden, Sønderå Kommune
    Serviceloven § 52, stk. 3, nr. 8 | Formidling af praktikophold | 90-270 | 20 timer om ugen; 15 timer om ugen | Autoværkstedet Sønderå; Sønderå Produktionsskole
    Serviceloven § 52 a, stk. 1, nr. 1 | Ophold på efterskole | 300-330 | et skoleår | Efterskolen ved Sønderå
";

const SL140_CHILD_TEXT: &str = "
opening
    Barnet bor hos sin mor og har gennem længere tid vist tegn på mistrivsel i skolen.
    Der er modtaget flere underretninger fra skolen om barnets fravær og manglende hygiejne.
    Barnet er anbragt efter en børnefaglig undersøgelse, der viste omsorgssvigt.
    Barnet har en ADHD-diagnose, og familien har brug for støtte til struktur i hverdagen.
    Barnet har i en periode haft selvskadende adfærd og er tilknyttet børne- og ungdomspsykiatrien.
detail
    Barnet har god kontakt til sin klasselærer og går til håndbold, som er en vigtig ressource.
    Der er aftalt samvær med forældrene hver anden weekend.
    Skolen oplyser, at barnet fagligt ligger under klassetrinnet.
    Sundhedsplejen gav tidligt udtryk for bekymring for familien.
goal
    Barnet trives i skolen og har et fremmøde på mindst 90 %.
    Barnet har en stabil og forudsigelig hverdag med faste rammer.
    Forældrene kan aflæse og imødekomme barnets behov.
    Barnet har mindst én stabil venskabsrelation.
    Barnets faglige niveau er løftet, så barnet kan følge undervisningen.
intervention
    Serviceloven § 52, stk. 3, nr. 6 | Fast kontaktperson | 180-730 | 3 timer om ugen; 5 timer om ugen | Kontaktpersonkorpset, Sønderå Kommune; Familiehuset Sønderå
    Serviceloven § 52, stk. 3, nr. 5 | Aflastning | 180-730 | én weekend om måneden; to weekender om måneden | Familieplejen Sønderå (aflastningsfamilie)
";

const SL140_INFANT_TEXT: &str = "
opening
    Barnet er født af en mor med et aktivt misbrug og blev anbragt i plejefamilie kort efter fødslen.
    Sundhedsplejen har underrettet om manglende trivsel og vægtøgning hos barnet.
    Daginstitutionen har underrettet om, at barnet ofte kommer sultent og for tyndt klædt på.
    Forældrene er meget unge og har brug for støtte til at tage vare på barnet.
detail
    Barnet er forsinket i sin sproglige udvikling.
    Der er et tæt samarbejde med sundhedsplejen og daginstitutionen.
    Der er aftalt samvær med forældrene to gange om ugen.
goal
    Barnet følger en alderssvarende udvikling.
    Forældrene sikrer barnet faste rutiner for søvn og måltider.
    Barnet møder stabilt i daginstitution.
    Barnet har en tryg tilknytning til en primær omsorgsperson.
intervention
    Serviceloven § 52, stk. 3, nr. 4 | Døgnophold for hele familien | 90-240 | døgnophold | Familiecentret Lyngly
";

const SL140_TEXT: &str = "
detail
    Forældrene er samarbejdsvillige, men har svært ved at omsætte rådgivning til praksis.
    Søskende er ikke omfattet af foranstaltninger.
assessment
    Barnet er i positiv udvikling. Indsatsen fortsætter uændret.
    Der er fortsat bekymring for barnets trivsel; indsatsen justeres ved næste opfølgning.
    Forældrene profiterer af støtten, og der arbejdes hen imod en gradvis nedtrapning.
    Anbringelsen er stabil, og barnet har knyttet sig til de voksne på anbringelsesstedet.
intervention
    Serviceloven § 52, stk. 3, nr. 2 | Praktisk pædagogisk støtte i hjemmet | 90-365 | 6 timer om ugen; 4 timer om ugen | Familiehuset Sønderå; Familiekonsulenterne Syd ApS
    Serviceloven § 52, stk. 3, nr. 3 | Familiebehandling | 90-365 | 1 session om ugen; 2 sessioner om måneden | Familiehuset Sønderå
    Serviceloven § 52, stk. 3, nr. 7 | Anbringelse uden for hjemmet | 365-1460 | døgnanbringelse | Familieplejen Sønderå (plejefamilie); Netværksplejefamilie; Opholdsstedet Egebakken; Opholdsstedet Lyngly
";

const SL140_AFTERCARE_TEXT: &str = "
opening
    Den unge var anbragt på opholdssted fra 14-årsalderen og modtager efterværn efter SL § 76.
    Den unge var anbragt i plejefamilie og er flyttet i egen lejlighed med efterværn.
    Den unge kom til Danmark som uledsaget mindreårig og modtager efterværn efter anbringelsen.
    Den unge har betydeligt og varigt nedsat funktionsevne og modtager efterværn til det 23. år.
detail
    Den unge er startet på en erhvervsuddannelse, men har et svingende fremmøde.
    Overgangen til voksenlivet kræver støtte til økonomi, bolig og kontakt til myndigheder.
    Der samarbejdes med jobcentret om uddannelse og forsørgelse.
    Den unge har fortsat god kontakt til sit tidligere anbringelsessted.
    Den unge har et forbrug af hash, som drøftes løbende.
goal
    Den unge gennemfører første år af sin uddannelse.
    Den unge kan selv håndtere økonomi, regninger og digital post.
    Den unge bor stabilt i egen bolig.
    Den unge har et netværk, der kan støtte, når efterværnet ophører.
assessment
    Den unge er godt i gang med voksenlivet, men har fortsat brug for en fast voksen.
    Efterværnet vurderes nødvendigt for at fastholde den unge i uddannelse.
    Den unge har svært ved at overholde aftaler; kontaktpersonen følger tæt op.
intervention
    Serviceloven § 76, stk. 3, nr. 2 | Fast kontaktperson som efterværn | 180-730 | 3 timer om ugen; 4 timer om ugen | Kontaktpersonkorpset, Sønderå Kommune; Familiehuset Sønderå
    Serviceloven § 76, stk. 3, nr. 1 | Opretholdelse af anbringelsesstedet | 180-730 | døgnophold | Familieplejen Sønderå (plejefamilie); Opholdsstedet Egebakken; Opholdsstedet Lyngly
    Serviceloven § 76, stk. 3, nr. 3 | Støtte til bolig og økonomi i overgangen til voksenlivet | 180-540 | 2 timer om ugen; ugentligt besøg | Ungeenheden, Sønderå Kommune; Bostøtteteamet Sønderå
";

const LAB27_YOUTH_TEXT: &str = "
opening
    Den unge har ingen erhvervskompetencegivende uddannelse og har brug for afklaring af uddannelsesvalg.
    Den unge har afbrudt en erhvervsuddannelse og har fået et uddannelsespålæg.
    Den unge er i målgruppen for ungeindsatsen og har ikke fundet fodfæste efter grundskolen.
    Den unge er ledig efter en gymnasial uddannelse og søger vejledning om videre uddannelse.
";

const LAB27_CASH_TEXT: &str = "
opening
    Borgeren er jobparat kontanthjælpsmodtager og har tidligere arbejdet som lagermedarbejder.
    Borgeren er aktivitetsparat kontanthjælpsmodtager med sparsom erhvervserfaring.
    Borgeren har arbejdet i rengøringsbranchen og modtager nu kontanthjælp.
    Borgeren har været ledig i over et år og er overgået fra dagpenge til kontanthjælp.
";

const LAB27_SICKNESS_TEXT: &str = "
opening
    Borgeren er sygemeldt fra sit job som social- og sundhedshjælper med rygsmerter.
    Borgeren er sygemeldt med stress fra en stilling i den private sektor.
    Borgeren modtager sygedagpenge efter en knæoperation og er i visitationskategori 2.
    Borgeren er sygemeldt med depression og har været væk fra arbejdet i fem måneder.
";

const LAB27_TEXT: &str = "
detail
    Der er holdt jobsamtale, og borgeren er indstillet på at deltage i tilbud.
    Borgeren har kørekort og kan tage arbejde i hele kommunen.
    Borgeren har vanskeligheder med læsning og skrivning, som kan være en barriere.
    Borgeren ønsker at arbejde inden for transport eller logistik.
    Borgeren har et godt netværk og er motiveret for at komme i job.
    Der er aftalt jobsamtaler mindst hver tredje måned.
goal
    Ordinær beskæftigelse på fuld tid inden for et år.
    Påbegynde en erhvervsuddannelse ved næste optag.
    Fastholde tilknytningen til arbejdsmarkedet med gradvis optrapning af timer.
    Afklare beskæftigelsesmålet gennem virksomhedspraktik.
    Opnå kompetencer, der matcher efterspørgslen i området.
assessment
    Borgeren vurderes at kunne komme i ordinær beskæftigelse med en kortere indsats.
    Der er behov for en trinvis indsats med praktik og mentor.
    Borgeren deltager aktivt i tilbud og overholder aftaler. Jobsøgningen er målrettet.
    Helbredsmæssige forhold begrænser arbejdsevnen; sagen drøftes med egen læge.
intervention
    LAB § 42 | Virksomhedspraktik | 28-91 | 25 timer om ugen; 15 timer om ugen; 30 timer om ugen | Sønderå Maskinfabrik A/S; Netto Sønderå Midtby; Plejecenter Åbrinken; Vognmand Nørgaard ApS
    LAB § 51 | Ansættelse med løntilskud | 91-365 | 37 timer om ugen; 30 timer om ugen | Sønderå Kommune, Park og Vej; Byggemarked Syd ApS; Plejecenter Åbrinken
    LAB § 32 | Vejledning og opkvalificering | 14-120 | 6-ugers kursus; truckcertifikat; FVU-dansk 4 timer om ugen | AMU Syd; VUC Sønderå; Sønderå Erhvervsskole
    LAB § 31 b | Mentorstøtte | 91-365 | 2 timer om ugen; 1 time om ugen | Mentorkorpset, Jobcenter Sønderå; Mentorhuset Syd ApS
";

const LAB30A_TEXT: &str = "
opening
    Borgeren har haft en længere sygdomsperiode med angst og depression og er forelagt rehabiliteringsteamet.
    Borgeren har kroniske smerter efter en arbejdsulykke og har ikke kunnet fastholde arbejde.
    Borgeren har sammensatte problemer med misbrug, psykisk sårbarhed og gæld.
    Borgeren modtager sygedagpenge i visitationskategori 3 og overgår til jobafklaringsforløb.
    Borgeren har en erhvervet hjerneskade og har brug for afklaring af arbejdsevnen.
detail
    Rehabiliteringsteamet har anbefalet et ressourceforløb med en tværfaglig indsats.
    En koordinerende sagsbehandler holder samtaler med borgeren mindst seks gange om året.
    Borgeren er tilknyttet distriktspsykiatrien og egen læge.
    Borgeren ønsker på sigt et fleksjob inden for kontorområdet.
    Borgerens sociale forhold er ustabile, og der samarbejdes med voksenområdet.
goal
    Arbejdsevnen er afklaret med henblik på fleksjob.
    Stabil deltagelse i virksomhedspraktik 10 timer om ugen.
    Bedre mestring af smerter og symptomer i hverdagen.
    Stabil bolig og økonomi som grundlag for en beskæftigelsesrettet indsats.
assessment
    Borgeren er i gang med ressourceforløbet og deltager nu stabilt.
    Arbejdsevnen er fortsat uafklaret. Der indhentes speciallægeerklæring.
    Borgeren vurderes at kunne varetage et fleksjob med 10–12 timer om ugen.
    Helbredet er forværret i perioden, og sagen forelægges rehabiliteringsteamet igen.
intervention
    LAB § 68 b | Ressourceforløb | 365-1095 | 2 år; 1 år | Jobcenter Sønderå, Rehabiliteringsteamet
    LAB § 68 c | Jobafklaringsforløb | 180-365 | 6 måneder; 12 måneder | Jobcenter Sønderå, Rehabiliteringsteamet
    LAB § 31 b | Mentorstøtte | 180-540 | 2 timer om ugen; 3 timer om ugen | Mentorkorpset, Jobcenter Sønderå; Mentorhuset Syd ApS
    Sundhedsloven; koordineret i rehabiliteringsplanen | Afklarende behandlingsforløb hos distriktspsykiatrien | 90-365 | samtaler hver 14. dag | Distriktspsykiatrien Sønderå
    LAB § 42 | Virksomhedspraktik med skånehensyn | 91-270 | 8 timer om ugen; 10 timer om ugen; 12 timer om ugen | Sønderå Maskinfabrik A/S; Plejecenter Åbrinken; Sønderå Kommune, Park og Vej
";

const IL19_TEXT: &str = "
opening
    Borgeren er flygtning fra Syrien og har opholdstilladelse efter udlændingelovens § 7.
    Borgeren er familiesammenført og har boet i kommunen i et år.
    Borgeren er flygtning fra Eritrea og blev boligplaceret i kommunen for to år siden.
    Borgeren er flygtning fra Afghanistan og har ingen skolegang fra hjemlandet.
    Borgeren er kvoteflygtning fra Somalia og kom til kommunen sidste år.
detail
    Borgeren har arbejdet som frisør og vil gerne bruge sine erfaringer i Danmark.
    Borgeren følger Danskuddannelse 2 og har god progression.
    Der bruges tolk ved alle samtaler.
    Borgeren har helbredsmæssige gener, som er beskrevet i helbredsvurderingen ved ankomsten.
    Borgeren er uddannet lærer i hjemlandet; uddannelsen er ikke vurderet i Danmark.
goal
    Bestå Prøve i Dansk 2 inden for programperioden.
    Ordinær beskæftigelse inden for rengøring eller service.
    Påbegynde en erhvervsuddannelse efter endt danskuddannelse.
    Blive selvforsørgende, inden integrationsprogrammet udløber.
assessment
    Borgeren er godt i gang med danskuddannelsen og deltager stabilt i tilbud.
    Sproglige barrierer gør det nødvendigt at kombinere praktik med danskundervisning.
    Borgeren er tæt på arbejdsmarkedet. Borgeren forventes at blive selvforsørgende inden for et år.
    Helbredsmæssige forhold begrænser deltagelsen; indsatsen koordineres med egen læge.
intervention
    Danskuddannelsesloven § 2 | Danskuddannelse | 365-1095 | Danskuddannelse 2, 15 timer om ugen; Danskuddannelse 1, 12 timer om ugen; Danskuddannelse 3, aftenhold | Sprogcenter Sønderå
    IL § 23 b | Virksomhedspraktik | 28-120 | 20 timer om ugen; 25 timer om ugen | Netto Sønderå Midtby; Plejecenter Åbrinken; Sønderå Kommune, Park og Vej
    IL § 23 c | Ansættelse med løntilskud | 91-365 | 30 timer om ugen; 37 timer om ugen | Sønderå Maskinfabrik A/S; Byggemarked Syd ApS
    IL § 23 d | Mentorstøtte | 91-365 | 2 timer om ugen; 1 time om ugen | Mentorkorpset, Jobcenter Sønderå; Mentorhuset Syd ApS
";

// SL part V (afsnit V) interventions for adults: §§ 85, 97, 99, 101, 103, 104, 107, 108.
const SL141_TEXT: &str = "
opening
    Borgeren har betydelig nedsat psykisk funktionsevne og modtager hjælp efter servicelovens afsnit V.
    Borgeren har et langvarigt misbrug af alkohol og har svært ved at klare sig i egen bolig.
    Borgeren har en erhvervet hjerneskade og har brug for støtte i hverdagen.
    Borgeren har været hjemløs og bor nu i midlertidigt botilbud.
    Borgeren er udviklingshæmmet og bor i egen lejlighed med bostøtte.
detail
    Borgeren er udredt efter voksenudredningsmetoden (VUM).
    Borgeren har takket ja til en handleplan og har deltaget i udarbejdelsen af den.
    Borgeren er i kontakt med distriktspsykiatrien.
    Borgeren har et lille netværk og ønsker mere kontakt med andre.
    Borgeren er i behandling i rusmiddelcentret, og indsatsen koordineres med jobcentret.
goal
    Borgeren kan klare indkøb, madlavning og økonomi med mindre støtte.
    Borgeren bevarer sin bolig og betaler husleje til tiden.
    Borgeren deltager i et aktivitetstilbud flere dage om ugen.
    Borgeren nedbringer sit forbrug af alkohol.
    Borgeren afklares i forhold til beskæftigelse i samarbejde med jobcentret.
assessment
    Indsatsen har skabt mere ro i hverdagen, og borgeren ønsker at fortsætte.
    Borgeren har opnået flere af målene, og støtten kan trappes ned.
    Borgeren har haft en periode med tilbagefald; indsatsen fastholdes uændret.
    Borgeren har brug for et mere omfattende tilbud, og sagen revurderes.
intervention
    Serviceloven § 85 | Socialpædagogisk støtte i eget hjem | 180-730 | 3 timer om ugen; 5 timer om ugen; 8 timer om ugen | Bostøtten, Sønderå Kommune; Socialpsykiatrien Syd
    Serviceloven § 99 | Støtte- og kontaktperson | 180-730 | 2 timer om ugen; 4 timer om måneden | SKP-teamet, Sønderå Kommune
    Serviceloven § 101 | Ambulant alkoholbehandling | 90-365 | ugentlige samtaler; 2 samtaler om ugen | Rusmiddelcenter Sønderå
    Serviceloven § 103 | Beskyttet beskæftigelse | 180-730 | 15 timer om ugen; 20 timer om ugen | Værkstedet Åbrinken
    Serviceloven § 104 | Aktivitets- og samværstilbud | 180-730 | 2 dage om ugen; 3 dage om ugen | Værestedet Lyset
    Serviceloven § 107 | Midlertidigt botilbud | 180-545 | døgnophold | Botilbuddet Engbo
";

// SL § 12 a: a risk assessment with the police, the situation (residence, work, education,
// relatives) and the support offered; in practice no specific goals (brief §1.7).
const SL12A_TEXT: &str = "
opening
    Borgeren har henvendt sig til kommunen på grund af risiko for alvorlig æresrelateret konflikt.
    Politiet har henvendt sig til kommunen om borgeren efter en bekymrende episode.
detail
    Borgeren er flyttet fra familien og bor midlertidigt hos en veninde.
    Borgeren er i gang med en uddannelse og ønsker at fortsætte den.
    Borgeren har arbejde, men frygter at familien opsøger arbejdspladsen.
    Borgeren har ingen kontakt til sine pårørende.
goal
    Borgeren er i sikkerhed.
assessment
    Risikoen vurderes fortsat som høj; sikkerhedsplanen følges.
    Risikoen er nedbragt, og borgeren har fået egen bolig.
intervention
    Serviceloven § 12 a | Gratis, anonym rådgivning ved æresrelateret konflikt | 90-365 | samtaler efter behov; 1 samtale om ugen | Rådgivningen, Voksen – Særlig rådgivning
    Serviceloven § 109 | Midlertidigt ophold på krisecenter | 30-180 | døgnophold | Krisecentret Lyngly
    Almenboligloven § 59 | Akut boliganvisning | 30-120 | anvist bolig | Borgerservice, Sønderå Kommune
";

// Documents: a section line is `when | kind | title | origin | author's title`, its items are
// sentences of the body. `when` is `first` (opens every case), `more` (may follow) or a share
// (that part of the cases has one, drawn per template). `kind` is spelt as in the data files.
// `origin` is `own` (the responsible caseworker writes it), `provider` (one of the case's
// providers) or outside parties separated by `;`.

const CHILD_INVESTIGATION: &str = "
first | assessment | Børnefaglig undersøgelse (SL § 50) | own
    Undersøgelsen bygger på børnesamtale, samtaler med forældrene og udtalelser fra skole og sundhedspleje.
    Barnets udvikling, familieforhold, skolegang, sundhed, fritid og venskaber er belyst.
    Undersøgelsen viser, at barnet har behov for særlig støtte ud over de almene tilbud.
    Forældrene er inddraget og har haft lejlighed til at kommentere undersøgelsen.
";

const SHARED_DOCUMENTS: &str = "
more | status-note | Statusudtalelse fra udfører | provider | Pædagog
    Samarbejdet fungerer, og aftalerne bliver i det store hele overholdt.
    Der ses en positiv udvikling siden sidste status.
    Fremmødet har været svingende i perioden.
    Udfører anbefaler, at indsatsen fortsætter i samme omfang.
more | note | Journalnotat – opfølgning | own
    Opfølgningen er holdt som planlagt.
    Borgeren var mødt og deltog aktivt i samtalen.
    Planens mål er gennemgået, og der er aftalt næste skridt.
    Der er ikke behov for at ændre indsatsen nu.
";

const SL140_DOCUMENTS: &str = "
more | plan | Handleplan (SL § 140) | own
    Handleplanen beskriver formålet med indsatsen og konkrete mål for barnets trivsel og udvikling.
    Planen er drøftet med barnet og forældrene.
    Der følges op efter tre måneder og derefter hvert halve år.
more | status-note | Udtalelse fra skole eller dagtilbud | Sønderå Skole; Åbrinkskolen; Børnehuset Mælkebøtten | Pædagogisk leder
    Barnet møder oftest til tiden, men har svært ved at koncentrere sig.
    Barnet fungerer bedst i små grupper med en kendt voksen.
    Fraværet er faldet i den seneste periode.
more | note | Journalnotat – hjemmebesøg | own
    Hjemmebesøget blev holdt som aftalt.
    Barnet virkede roligt og var i god kontakt med forælderen.
    Hjemmet fremstod ryddeligt, og der var mad i køleskabet.
0.12 | medical-statement | Udtalelse fra børne- og ungdomspsykiatrien | Børne- og ungdomspsykiatrisk afdeling, Sønderå Sygehus | Overlæge
    Barnet er udredt i ambulant regi.
    Afdelingen anbefaler faste rammer og et tæt samarbejde mellem hjem og skole eller dagtilbud.
    Der er aftalt en ny vurdering om seks måneder.
";

const SL57C_DOCUMENTS: &str = "
more | plan | Handleplan (SL § 57 c) | own
    Planen beskriver en koordineret indsats, der skal forebygge ny kriminalitet.
    Den unge og forældrene har deltaget i udarbejdelsen.
    Der følges op efter tre måneder.
more | note | Referat af familieinddragende netværksmøde | own
    Mødet blev holdt med den unge, forældrene, skolen og SSP-konsulenten.
    Netværket påtog sig konkrete opgaver i forhold til den unges fritid.
    Næste møde er aftalt om tre måneder.
1.0 | police-statement | Underretning fra politiet | Sønderå Politikreds | Politiassistent
    Den unge er sigtet i en sag om personfarlig kriminalitet.
    Politiet har holdt bekymringssamtale med den unge og forældrene.
    Politiet vurderer, at den unge er tilknyttet en gruppe, der er kendt for gentagen kriminalitet.
0.3 | police-statement | Udskrift af sigtelse | Sønderå Politikreds | Politikommissær
    Sigtelsen vedrører indbrud og tyveri.
    Sagen er sendt til anklagemyndigheden.
    Den unge har erkendt forholdet under afhøringen.
";

const SL54_DOCUMENTS: &str = "
first | plan | Handleplan for støtte til forældre (SL § 54) | own
    Planen bygger på barnets børnefaglige undersøgelse og barnets handleplan.
    Målene for støtten er aftalt med forælderen.
    Der er holdt opstartsmøde med forælderen og støttepersonen.
more | status-note | Status fra støtteperson | provider | Støtteperson
    Forælderen har deltaget i de fleste aftalte møder.
    Samværene forløber roligt, når de er forberedt.
    Forælderen har brug for hjælp til at holde overblik over aftaler.
more | status-note | Status fra rusmiddelcenter | Rusmiddelcenter Sønderå | Rusmiddelkonsulent
    Borgeren møder stabilt til samtaler.
    De seneste urinprøver har været uden fund.
    Behandlingen fortsætter med ugentlige samtaler.
";

const LAB27_DOCUMENTS: &str = "
first | plan | Min Plan | own
    Planen indeholder borgerens beskæftigelsesmål og aftalte tilbud.
    Planen er lavet i fællesskab med borgeren ved jobsamtalen.
    Borgeren har fået planen i sin digitale postkasse.
more | note | Referat af jobsamtale | own
    Borgeren er orienteret om sin rådighedsforpligtelse.
    Jobsøgningen er gennemgået, og borgeren søger relevante stillinger.
    Der er aftalt ny samtale om tre måneder.
more | status-note | Status fra tilbud | provider | Virksomhedskonsulent
    Borgeren møder stabilt og er vellidt af kollegerne.
    Borgeren har brug for tydelige instrukser i opstarten.
    Virksomheden overvejer at ansætte borgeren efter forløbet.
more | plan | Opdateret Min Plan | own
    Planen er opdateret med et nyt tilbud.
    Beskæftigelsesmålet er uændret.
0.08 | medical-statement | Statusattest fra egen læge | Almen praksis | Praktiserende læge
    Borgeren er i behandling for lændesmerter.
    Tilstanden forventes at bedres over de næste måneder.
    Lettere arbejde uden tunge løft kan påbegyndes nu.
0.04 | medical-statement | Udtalelse fra sygehus | Sønderå Sygehus, Ortopædkirurgisk afdeling | Afdelingslæge
    Borgeren er opereret i højre knæ.
    Genoptræningen forløber planmæssigt.
    Fuld belastning forventes om tre måneder.
";

// 1 − (1 − 0.25) × (1 − 0.2) = 40 % of rehabilitation plans have a medical statement.
const LAB30A_DOCUMENTS: &str = "
first | plan | Rehabiliteringsplan – forberedende del | own
    Den forberedende del beskriver borgerens mål, ressourcer og udfordringer.
    En sundhedskoordinator har vurderet borgerens helbred.
    Sagen forelægges rehabiliteringsteamet.
more | assessment | Indstilling fra rehabiliteringsteamet | own
    Teamet anbefaler et ressourceforløb med en tværfaglig indsats.
    Teamet lægger vægt på, at helbred og beskæftigelse håndteres samtidig.
    Borgeren deltog i mødet og er enig i anbefalingen.
more | plan | Rehabiliteringsplan – indsatsdel | own
    Indsatsdelen beskriver de konkrete indsatser i ressourceforløbet.
    Første skridt er aftalt med borgeren.
    Der følges op mindst seks gange om året.
more | status-note | Status fra tilbud | provider | Mentor
    Borgeren har mødt stabilt i perioden.
    Borgeren har haft en periode med forværring af symptomerne.
    Mentor anbefaler en gradvis optrapning af timetallet.
more | note | Samtale med koordinerende sagsbehandler | own
    Samtalen er holdt som aftalt.
    Borgeren oplever, at indsatserne hænger bedre sammen.
    Der er aftalt et fællesmøde med distriktspsykiatrien.
0.25 | medical-statement | Lægeattest LÆ 265 | Almen praksis | Praktiserende læge
    Borgeren har været kendt i praksis gennem flere år.
    Der er tale om en kronisk lidelse med svingende forløb.
    Borgeren vurderes at kunne varetage lettere arbejde i få timer dagligt.
    Behandlingsmulighederne er ikke udtømte.
0.2 | medical-statement | Speciallægeerklæring | Distriktspsykiatrien | Speciallæge i psykiatri
    Borgeren er udredt for moderat depression og generaliseret angst.
    Borgeren er i medicinsk behandling og samtaleterapi.
    Prognosen vurderes som god med fortsat behandling.
    Arbejdsevnen er nedsat, men ikke varigt.
";

const IL19_DOCUMENTS: &str = "
first | plan | Integrationskontrakt | own
    Kontrakten er gennemgået med tolk og underskrevet af borgeren og kommunen.
    Kontrakten indeholder beskæftigelsesmål, danskuddannelse og de aftalte tilbud.
    Borgeren har fået en kopi af kontrakten.
more | note | Visitationssamtale med tolk | own
    Samtalen blev holdt med telefontolk.
    Borgerens uddannelse og erhvervserfaring fra hjemlandet er gennemgået.
    Der er aftalt opstart på sprogcentret.
more | status-note | Status fra sprogcentret | Sprogcenter Sønderå | Underviser
    Borgeren har et stabilt fremmøde og god progression.
    Borgeren forventes at gå til prøve ved næste termin.
    Fremmødet har været lavt på grund af sygdom i familien.
more | status-note | Opfølgning på virksomhedspraktik | provider | Praktikvejleder
    Borgeren er mødestabil og arbejdsom.
    Sproget er en barriere i kontakten med kunderne.
    Praktikken forlænges med fire uger.
more | note | Oplysninger fra Udlændingestyrelsen | Udlændingestyrelsen | Sagsbehandler
    Borgeren har opholdstilladelse som flygtning.
    Der er oplysninger om skolegang og erhverv fra asylfasen.
0.5 | medical-statement | Helbredsattest for nyankomne flygtninge | Almen praksis | Praktiserende læge
    Borgeren er undersøgt ved ankomsten til kommunen.
    Der er ikke fundet forhold, der hindrer deltagelse i integrationsprogrammet.
    Borgeren har søvnproblemer og er henvist til samtaler.
";

const SL141_DOCUMENTS: &str = "
first | plan | Handleplan efter SL § 141 | own
    Handleplanen beskriver formålet med indsatsen og de mål, borgeren selv har sat.
    Planen er udarbejdet sammen med borgeren på et møde i hjemmet.
    Borgeren har fået planen tilsendt.
more | assessment | Voksenudredning (VUM) | own
    Udredningen beskriver borgerens funktionsevne, ressourcer og udfordringer.
    Borgeren har deltaget i udredningen.
    Der er indhentet oplysninger fra egen læge og distriktspsykiatrien.
more | status-note | Status fra bostøtten | provider | Bostøttemedarbejder
    Borgeren tager godt imod støtten og holder de fleste aftaler.
    Borgeren har brug for hjælp til at åbne post og betale regninger.
    Der arbejdes med at skabe faste rutiner i hverdagen.
more | note | Årlig opfølgning | own
    Opfølgningen er holdt med borgeren i hjemmet.
    Målene er gennemgået, og handleplanen er justeret.
0.3 | medical-statement | Udtalelse fra distriktspsykiatrien | Distriktspsykiatrien | Overlæge
    Borgeren er diagnosticeret med skizofreni og er i medicinsk behandling.
    Tilstanden er stabil med den nuværende støtte.
    Borgeren vil fortsat have behov for støtte i eget hjem.
";

// Every § 12 a case has the police's contribution to the risk assessment.
const SL12A_DOCUMENTS: &str = "
first | assessment | Risikovurdering | own
    Risikovurderingen er udarbejdet i samarbejde med politiet.
    Der er udarbejdet en sikkerhedsplan sammen med borgeren.
    Borgerens bolig, arbejde, uddannelse og forhold til pårørende er gennemgået.
1 | police-statement | Oplysninger fra politiet til risikovurderingen | Sønderå Politi | Politikommissær
    Politiet har tidligere modtaget anmeldelser om trusler mod borgeren.
    Politiet vurderer, at der er risiko for yderligere overgreb.
more | plan | Handleplan efter SL § 12 a | own
    Planen beskriver de støttemuligheder, borgeren er tilbudt.
    Borgeren har takket ja til hjælp til bolig og fortsat rådgivning.
more | note | Koordinering med jobcentret og Borgerservice | own
    Jobcentret er orienteret om, at borgerens adresse ikke må fremgå af breve.
    Borgerservice har anvist en midlertidig bolig.
";

// ---------------------------------------------------------------------------------------------
// The tables, parsed
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct CaseTexts {
    openings: Vec<&'static str>,
    details: Vec<&'static str>,
    goals: Vec<&'static str>,
    assessments: Vec<&'static str>,
    interventions: Vec<InterventionTemplate>,
}

struct InterventionTemplate {
    paragraph: &'static str,
    description: &'static str,
    days: (i64, i64),
    scopes: Vec<&'static str>,
    providers: Vec<&'static str>,
}

#[derive(Clone, Copy, PartialEq)]
enum When {
    First,
    More,
    Share(f64),
}

enum Origin {
    Own,
    Provider,
    Outside(Vec<&'static str>),
}

struct DocTemplate {
    when: When,
    kind: DocumentKind,
    title: &'static str,
    origin: Origin,
    role: &'static str,
    sentences: Vec<&'static str>,
}

/// Every text table, parsed once per run.
struct Library {
    /// Indexed by `Track as usize`.
    tracks: Vec<CaseTexts>,
    /// Indexed like [`PlanType::ALL`].
    documents: Vec<Vec<DocTemplate>>,
}

impl Library {
    fn load() -> Result<Library, SynthError> {
        let tracks = Track::ALL
            .iter()
            .map(|track| parse_case_texts(track.tables()))
            .collect::<Result<_, _>>()?;
        let documents = PlanType::ALL
            .iter()
            .map(|&plan| parse_documents(document_tables(plan)))
            .collect::<Result<_, _>>()?;
        Ok(Library { tracks, documents })
    }

    fn case_texts(&self, track: Track) -> &CaseTexts {
        &self.tracks[track as usize]
    }

    fn documents(&self, plan: PlanType) -> &[DocTemplate] {
        let index = PlanType::ALL.iter().position(|&p| p == plan).unwrap_or(0);
        &self.documents[index]
    }
}

/// Splits a table into sections: an unindented line, then the indented lines under it.
fn sections(table: &'static str) -> Result<Vec<(&'static str, Vec<&'static str>)>, SynthError> {
    let mut sections: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with(' ') {
            let Some((_, items)) = sections.last_mut() else {
                return Err(SynthError::MalformedTable { line });
            };
            items.push(line.trim());
        } else {
            sections.push((line.trim(), Vec::new()));
        }
    }
    match sections.iter().find(|(_, items)| items.is_empty()) {
        Some((line, _)) => Err(SynthError::MalformedTable { line }),
        None => Ok(sections),
    }
}

fn parse_case_texts(tables: &[&'static str]) -> Result<CaseTexts, SynthError> {
    let mut texts = CaseTexts::default();
    for &table in tables {
        for (heading, items) in sections(table)? {
            match heading {
                "opening" => texts.openings.extend(items),
                "detail" => texts.details.extend(items),
                "goal" => texts.goals.extend(items),
                "assessment" => texts.assessments.extend(items),
                "intervention" => {
                    for line in items {
                        texts.interventions.push(parse_intervention(line)?);
                    }
                }
                line => return Err(SynthError::MalformedTable { line }),
            }
        }
    }
    let sections = [
        &texts.openings,
        &texts.details,
        &texts.goals,
        &texts.assessments,
    ];
    if sections.iter().any(|s| s.is_empty()) || texts.interventions.is_empty() {
        let line = tables.first().copied().unwrap_or_default();
        return Err(SynthError::MalformedTable { line });
    }
    Ok(texts)
}

fn parse_intervention(line: &'static str) -> Result<InterventionTemplate, SynthError> {
    let malformed = || SynthError::MalformedTable { line };
    let fields: Vec<&str> = line.split(" | ").map(str::trim).collect();
    let [paragraph, description, days, scopes, providers] = fields[..] else {
        return Err(malformed());
    };
    let (shortest, longest) = days.split_once('-').ok_or_else(malformed)?;
    let days = (
        shortest.parse().map_err(|_| malformed())?,
        longest.parse().map_err(|_| malformed())?,
    );
    if days.0 > days.1 {
        return Err(malformed());
    }
    Ok(InterventionTemplate {
        paragraph,
        description,
        days,
        scopes: scopes.split("; ").collect(),
        providers: providers.split("; ").collect(),
    })
}

fn parse_documents(tables: &[&'static str]) -> Result<Vec<DocTemplate>, SynthError> {
    let mut templates = Vec::new();
    for &table in tables {
        for (line, sentences) in sections(table)? {
            let malformed = || SynthError::MalformedTable { line };
            let fields: Vec<&str> = line.split(" | ").map(str::trim).collect();
            let (when, kind, title, origin, role) = match fields[..] {
                [when, kind, title, origin] => (when, kind, title, origin, ""),
                [when, kind, title, origin, role] => (when, kind, title, origin, role),
                _ => return Err(malformed()),
            };
            let when = match when {
                "first" => When::First,
                "more" => When::More,
                share => match share.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => When::Share(p),
                    _ => return Err(malformed()),
                },
            };
            // The kinds are written as in the data files, e.g. `medical-statement`.
            let kind = DocumentKind::deserialize(kind.into_deserializer())
                .map_err(|_: serde::de::value::Error| malformed())?;
            let origin = match origin {
                "own" => Origin::Own,
                "provider" => Origin::Provider,
                outside => Origin::Outside(outside.split("; ").collect()),
            };
            if !matches!(origin, Origin::Own) && role.is_empty() {
                return Err(malformed());
            }
            templates.push(DocTemplate {
                when,
                kind,
                title,
                origin,
                role,
                sentences,
            });
        }
    }
    let firsts = templates.iter().filter(|t| t.when == When::First).count();
    let mores = templates.iter().filter(|t| t.when == When::More).count();
    if firsts != 1 || mores == 0 {
        let line = tables.first().copied().unwrap_or_default();
        return Err(SynthError::MalformedTable { line });
    }
    Ok(templates)
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

struct Person {
    birth: NaiveDate,
    age: u32,
    male: bool,
    cpr: String,
    address_protected: bool,
}

/// One case to create: a plan of one citizen, routed to a unit.
struct Slot {
    person: usize,
    plan: PlanType,
    track: Track,
    unit: usize,
    /// Every plan the citizen holds.
    held: &'static [PlanType],
}

pub fn generate(config: &SynthConfig) -> Result<Dataset, SynthError> {
    if config.citizens < MIN_CITIZENS {
        return Err(SynthError::TooFewCitizens { min: MIN_CITIZENS });
    }
    let (first, last) = REFERENCE_YEARS;
    if !(first..=last).contains(&config.reference_date.year()) {
        return Err(SynthError::ReferenceDateOutOfRange {
            date: config.reference_date,
            first,
            last,
        });
    }
    let library = Library::load()?;
    let municipality = Municipality {
        name: "Sønderå Kommune".into(),
        code: "999".into(),
        seed: config.seed,
        reference_date: config.reference_date,
        mail_domain: "sonderaa.kommune.example".into(),
    };
    let today = config.reference_date;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);

    let people = draw_people(&mut rng, config.citizens, today)?;
    let profiles = assign_profiles(&mut rng, &people);
    let citizens = name_people(&mut rng, &people, &profiles);

    let mut slots = Vec::new();
    for (person, held) in profiles.iter().enumerate() {
        let Some(held) = held else { continue };
        let age = people[person].age;
        for &plan in held.plans {
            let track = Track::of(&mut rng, plan, age);
            let unit = track.unit(&mut rng, age);
            slots.push(Slot {
                person,
                plan,
                track,
                unit,
                held: held.plans,
            });
        }
    }

    let (caseworkers, by_unit) = hire_caseworkers(&mut rng, &slots, &municipality.mail_domain);
    let mut cases = Vec::with_capacity(slots.len());
    for slot in &slots {
        // Every unit has at least one caseworker, so no case is ever skipped here.
        let Some(&worker) = by_unit[slot.unit].choose(&mut rng) else {
            continue;
        };
        let person = &people[slot.person];
        cases.push(build_case(
            &mut rng,
            &library,
            today,
            person,
            slot,
            &caseworkers[worker],
        ));
    }
    number_cases(&mut cases);

    Ok(Dataset {
        municipality,
        citizens,
        caseworkers,
        cases,
    })
}

fn draw_people(
    rng: &mut ChaCha8Rng,
    count: usize,
    today: NaiveDate,
) -> Result<Vec<Person>, SynthError> {
    let total_weight: u32 = AGE_BANDS.iter().map(|band| band.2).sum();
    let mut taken = HashSet::with_capacity(count);
    let mut people = Vec::with_capacity(count);
    for _ in 0..count {
        let mut pick = rng.random_range(0..total_weight);
        let mut age = 0;
        for &(first, last, weight) in &AGE_BANDS {
            if pick < weight {
                age = rng.random_range(first..=last);
                break;
            }
            pick -= weight;
        }
        let birthday = add_years(today, -i64::from(age));
        let birth = add_days(birthday, -rng.random_range(0..365));
        let male = rng.random_bool(0.5);
        let cpr = synthetic_cpr(rng, birth, male, &mut taken)?;
        people.push(Person {
            birth,
            age: today.years_since(birth).unwrap_or(age),
            male,
            cpr,
            address_protected: rng.random_bool(ADDRESS_PROTECTED_SHARE),
        });
    }
    Ok(people)
}

/// A CPR number for `birth` whose last digit gives the gender (odd: male) and which fails the
/// modulus-11 check, so it can never be a number the CPR office issued before 2007.
fn synthetic_cpr(
    rng: &mut ChaCha8Rng,
    birth: NaiveDate,
    male: bool,
    taken: &mut HashSet<String>,
) -> Result<String, SynthError> {
    // The seventh digit must encode the century of the birth year (see `Cpr::from_parts`).
    let century_digits = match birth.year() {
        1858..=1899 | 2037..=2057 => 5..=8,
        1900..=1999 => 0..=3,
        _ => 4..=9,
    };
    for _ in 0..CPR_ATTEMPTS {
        let sequence = rng.random_range(century_digits.clone()) * 1000
            + rng.random_range(0..100u16) * 10
            + 2 * rng.random_range(0..5u16)
            + u16::from(male);
        let Some(cpr) = Cpr::from_parts(birth, sequence) else {
            continue;
        };
        if !cpr.satisfies_modulus_11() && taken.insert(cpr.as_str().to_owned()) {
            return Ok(cpr.as_str().to_owned());
        }
    }
    Err(SynthError::CprSpaceExhausted { birth_date: birth })
}

/// Gives each profile its share of fitting citizens, drawn at random from those still free.
/// One linear pass per profile, so the whole step is O(profiles × citizens).
fn assign_profiles(rng: &mut ChaCha8Rng, people: &[Person]) -> Vec<Option<&'static Profile>> {
    let population = people.len() as u64;
    let mut held: Vec<Option<&'static Profile>> = vec![None; people.len()];
    for profile in PROFILES {
        let mut wanted =
            (profile.per_reference * population + REFERENCE_POPULATION / 2) / REFERENCE_POPULATION;
        if ALWAYS_PRESENT.contains(&profile.plans) {
            wanted = wanted.max(1);
        }
        let (youngest, oldest) = profile.ages;
        let candidates: Vec<usize> = (0..people.len())
            .filter(|&i| held[i].is_none() && (youngest..=oldest).contains(&people[i].age))
            .collect();
        let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
        for &i in candidates.choose_multiple(rng, wanted) {
            held[i] = Some(profile);
        }
    }
    held
}

fn name_people(
    rng: &mut ChaCha8Rng,
    people: &[Person],
    profiles: &[Option<&'static Profile>],
) -> Vec<Citizen> {
    people
        .iter()
        .zip(profiles)
        .map(|(person, held)| {
            // Integration contracts are for refugees and family-reunified foreigners.
            let refugee = held.is_some_and(|p| p.plans.contains(&Il19));
            let non_danish = refugee || rng.random_bool(NON_DANISH_NAME_SHARE);
            let (first, last) = draw_name(rng, person.male, person.birth.year(), non_danish);
            let name = if !non_danish && rng.random_bool(0.2) {
                format!("{first} {} {last}", pick(rng, SURNAMES_DANISH))
            } else {
                format!("{first} {last}")
            };
            Citizen {
                cpr: person.cpr.clone(),
                name,
                birth_date: person.birth,
                address_protected: person.address_protected,
            }
        })
        .collect()
}

fn draw_name(
    rng: &mut ChaCha8Rng,
    male: bool,
    birth_year: i32,
    non_danish: bool,
) -> (&'static str, &'static str) {
    if non_danish {
        let firsts = if male {
            MALE_NAMES_NON_DANISH
        } else {
            FEMALE_NAMES_NON_DANISH
        };
        return (pick(rng, firsts), pick(rng, SURNAMES_NON_DANISH));
    }
    // Name fashions change: mostly the names of one's generation, sometimes the other's.
    let younger = (birth_year >= 1985) != rng.random_bool(0.15);
    let firsts = match (male, younger) {
        (true, true) => MALE_NAMES_YOUNGER,
        (true, false) => MALE_NAMES_OLDER,
        (false, true) => FEMALE_NAMES_YOUNGER,
        (false, false) => FEMALE_NAMES_OLDER,
    };
    (pick(rng, firsts), pick(rng, SURNAMES_DANISH))
}

/// Staffs every unit for its caseload, with at least one caseworker per unit and two per
/// department. Returns the caseworkers and, per unit, the indices of its caseworkers.
fn hire_caseworkers(
    rng: &mut ChaCha8Rng,
    slots: &[Slot],
    mail_domain: &str,
) -> (Vec<Caseworker>, Vec<Vec<usize>>) {
    let mut load = [0usize; UNITS.len()];
    for slot in slots {
        load[slot.unit] += 1;
    }
    let mut caseworkers = Vec::new();
    let mut by_unit = vec![Vec::new(); UNITS.len()];
    let mut emails = HashSet::new();
    let mut numbers: BTreeMap<Department, usize> = BTreeMap::new();
    for (unit, &(department, unit_name)) in UNITS.iter().enumerate() {
        let units_in_department = UNITS.iter().filter(|u| u.0 == department).count();
        let floor = if units_in_department == 1 { 2 } else { 1 };
        let staff = load[unit]
            .div_ceil(cases_per_caseworker(department))
            .max(floor);
        for _ in 0..staff {
            let number = numbers.entry(department).or_insert(0);
            *number += 1;
            // Municipal social work is staffed mostly by women.
            let male = rng.random_bool(0.35);
            let non_danish = rng.random_bool(0.08);
            let birth_year = rng.random_range(1962..2000);
            let (first, last) = draw_name(rng, male, birth_year, non_danish);
            let local = format!("{}.{}", mail_local(first), mail_local(last));
            let mut email = format!("{local}@{mail_domain}");
            let mut suffix = 2;
            while !emails.insert(email.clone()) {
                email = format!("{local}{suffix}@{mail_domain}");
                suffix += 1;
            }
            by_unit[unit].push(caseworkers.len());
            caseworkers.push(Caseworker {
                id: format!("cw-{}-{:03}", department.id(), number),
                name: format!("{first} {last}"),
                department,
                unit: unit_name.to_owned(),
                phone: format!(
                    "+45 7{} {:02} {:02} {:02}",
                    rng.random_range(2..10),
                    rng.random_range(10..100),
                    rng.random_range(0..100),
                    rng.random_range(0..100)
                ),
                email,
            });
        }
    }
    (caseworkers, by_unit)
}

/// An e-mail local part: lower-case ASCII, Danish letters spelt out as Danes do.
fn mail_local(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for c in name.chars().flat_map(char::to_lowercase) {
        match c {
            'æ' => out.push_str("ae"),
            'ø' => out.push_str("oe"),
            'å' => out.push_str("aa"),
            'é' => out.push('e'),
            c if c.is_ascii_alphanumeric() || c == '-' => out.push(c),
            _ => {}
        }
    }
    out
}

fn build_case(
    rng: &mut ChaCha8Rng,
    library: &Library,
    today: NaiveDate,
    person: &Person,
    slot: &Slot,
    responsible: &Caseworker,
) -> CaseRecord {
    let plan = slot.plan;
    let rules = rules(plan);

    // Opened within the plan type's history, and only once the citizen was old enough.
    let earliest =
        add_years(person.birth, i64::from(rules.min_age)).max(add_days(today, -rules.history_days));
    let latest = add_days(add_years(person.birth, i64::from(rules.max_age) + 1), -1)
        .min(add_days(today, -1))
        .max(person.birth);
    let earliest = earliest.min(latest);
    let span = days_between(earliest, latest);
    let mut offset = rng.random_range(0..=span);
    if plan == Lab27 {
        // Most Min Plans are recent: unemployment spells are short.
        offset = offset.max(rng.random_range(0..=span));
    }
    let opened_on = add_days(earliest, offset);

    // A citizen with several plans holds them at the same time (that is what the report counts
    // as overlap), so only single-plan cases are ever closed.
    let age_of_case = days_between(opened_on, today);
    let closes = slot.held.len() == 1 && age_of_case >= 2 && !rng.random_bool(OPEN_SHARE);
    let closed_on = closes.then(|| add_days(opened_on, rng.random_range(1..age_of_case)));
    let until = closed_on.unwrap_or(today);

    let next_follow_up_on = closed_on.is_none().then(|| {
        let cadence = rng.random_range(rules.cadence.0..=rules.cadence.1);
        let first = rules.first_follow_up;
        let due = if age_of_case < first {
            first
        } else {
            first + ((age_of_case - first) / cadence + 1) * cadence
        };
        add_days(opened_on, due)
    });

    let texts = library.case_texts(slot.track);
    let mut situation = vec![pick(rng, &texts.openings).to_owned()];
    situation.extend(pick_some(rng, &texts.details, 1, 2).map(|s| (*s).to_owned()));
    if plan == Il19 {
        situation.push(integration_specials(rng, person.age, slot.held));
    }
    // An open plan is revised as it goes, so its goals point ahead of today. A § 12 a plan is
    // about immediate safety: in practice it sets no specific goals (brief §1.7).
    let (fewest_goals, most_goals) = if plan == Sl12a { (0, 0) } else { (1, 3) };
    let goals = pick_some(rng, &texts.goals, fewest_goals, most_goals)
        .map(|goal| Goal {
            description: (*goal).to_owned(),
            target_on: Some(match closed_on {
                Some(_) => add_days(opened_on, rng.random_range(120..=730)),
                None => add_days(today, rng.random_range(30..=540)),
            }),
        })
        .collect();

    // The first intervention starts with the plan; later ones at any time in its life, so that
    // long-running open cases also have current interventions.
    let lifetime = days_between(opened_on, until);
    let interventions: Vec<Intervention> = pick_some(rng, &texts.interventions, 1, 4)
        .enumerate()
        .map(|(i, t)| {
            let latest_start = if i == 0 { lifetime.min(60) } else { lifetime };
            let start_on = add_days(opened_on, rng.random_range(0..=latest_start));
            let planned_end = add_days(start_on, rng.random_range(t.days.0..=t.days.1));
            let end_on = match closed_on {
                Some(closed) => Some(planned_end.min(closed)),
                // Some ongoing interventions (a placement, a course) have no end date yet.
                None if planned_end > today && rng.random_bool(0.3) => None,
                None => Some(planned_end),
            };
            Intervention {
                legal_paragraph: t.paragraph.to_owned(),
                description: t.description.to_owned(),
                provider: pick(rng, &t.providers).to_owned(),
                scope: pick(rng, &t.scopes).to_owned(),
                start_on,
                end_on,
            }
        })
        .collect();

    let assessment_summary = pick(rng, &texts.assessments).to_owned();
    let documents = write_documents(
        rng,
        library.documents(plan),
        opened_on,
        until,
        responsible,
        &interventions,
    );

    CaseRecord {
        case_id: String::new(),
        cpr: person.cpr.clone(),
        plan_type: plan,
        state: if closed_on.is_some() {
            CaseState::Closed
        } else {
            CaseState::Open
        },
        opened_on,
        closed_on,
        responsible: responsible.id.clone(),
        situation: situation.join(" "),
        goals,
        interventions,
        next_follow_up_on,
        assessment_summary,
        residence: residence_of(&person.cpr),
        sensitivity: sensitivity_of(person, plan, &documents),
        documents,
    }
}

/// Streets of the synthetic municipality's towns.
const STREETS: &[&str] = &[
    "Skovvej",
    "Møllegade",
    "Engvej",
    "Kirkestræde",
    "Ågade",
    "Bakkevej",
    "Stationsvej",
    "Rosenvænget",
    "Havnegade",
    "Birkealle",
    "Vestergade",
    "Præstevej",
];
const TOWNS: &[&str] = &[
    "9990 Sønderå",
    "9991 Nørre Sønderå",
    "9992 Åbæk",
    "9993 Lystrup Strand",
];

/// The citizen's address, derived from the CPR number (not from the random stream, so adding it
/// changed no other generated value). Postcodes 9990–9993 do not exist.
fn residence_of(cpr: &str) -> String {
    let n = cpr
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let street = STREETS[(n % STREETS.len() as u64) as usize];
    let number = 1 + (n / 7) % 120;
    let town = TOWNS[((n / 1009) % TOWNS.len() as u64) as usize];
    format!("{street} {number}, {town}")
}

fn sensitivity_of(person: &Person, plan: PlanType, documents: &[Document]) -> Vec<String> {
    let mut flags = Vec::new();
    if person.address_protected {
        flags.push(FLAG_ADDRESS_PROTECTION.to_owned());
    }
    if plan == Sl12a {
        flags.push(FLAG_HONOUR_RELATED_CONFLICT.to_owned());
    }
    if documents
        .iter()
        .any(|d| d.kind == DocumentKind::PoliceStatement)
    {
        flags.push(FLAG_POLICE_INFORMATION.to_owned());
    }
    flags
}

/// The integration contract must say whether an education injunction has been issued and which
/// administration coordinates when the citizen receives several interventions (IL § 19).
fn integration_specials(rng: &mut ChaCha8Rng, age: u32, held: &[PlanType]) -> String {
    let injunction = if age < 30 && rng.random_bool(0.4) {
        "Der er givet uddannelsespålæg."
    } else {
        "Der er ikke givet uddannelsespålæg."
    };
    let coordinator = if held.contains(&Lab30a) {
        "Jobcentret (Rehabiliteringsteamet) koordinerer den samlede indsats."
    } else if held
        .iter()
        .any(|p| p.department() == Department::ChildWelfare)
    {
        "Børne- og Familieafdelingen koordinerer den samlede indsats."
    } else {
        "Integrationsafdelingen koordinerer integrationsindsatsen."
    };
    format!("{injunction} {coordinator}")
}

fn write_documents(
    rng: &mut ChaCha8Rng,
    templates: &[DocTemplate],
    opened_on: NaiveDate,
    until: NaiveDate,
    responsible: &Caseworker,
    interventions: &[Intervention],
) -> Vec<Document> {
    let mut chosen: Vec<&DocTemplate> =
        templates.iter().filter(|t| t.when == When::First).collect();
    for template in templates {
        if let When::Share(share) = template.when
            && rng.random_bool(share)
        {
            chosen.push(template);
        }
    }
    let more: Vec<&DocTemplate> = templates.iter().filter(|t| t.when == When::More).collect();
    let wanted = rng.random_range(1..=5usize).max(chosen.len());
    while chosen.len() < wanted {
        let Some(&template) = more.choose(rng) else {
            break;
        };
        chosen.push(template);
    }

    let lifetime = days_between(opened_on, until);
    let mut documents: Vec<Document> = chosen
        .into_iter()
        .map(|template| {
            // The opening document is written as the case starts; the rest along the way.
            let latest = if template.when == When::First {
                lifetime.min(14)
            } else {
                lifetime
            };
            let dated_on = add_days(opened_on, rng.random_range(0..=latest));
            let (author, third_party_origin) = match &template.origin {
                Origin::Own => (responsible.name.clone(), None),
                Origin::Provider => {
                    let provider = interventions
                        .choose(rng)
                        .map_or("Udfører", |i| i.provider.as_str())
                        .to_owned();
                    (outside_author(rng, template.role), Some(provider))
                }
                Origin::Outside(origins) => (
                    outside_author(rng, template.role),
                    Some(pick(rng, origins).to_owned()),
                ),
            };
            let body = pick_some(rng, &template.sentences, 2, 4)
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            Document {
                document_id: String::new(),
                kind: template.kind,
                title: template.title.to_owned(),
                dated_on,
                author,
                third_party_origin,
                body,
            }
        })
        .collect();
    documents.sort_by_key(|d| d.dated_on);
    documents
}

fn outside_author(rng: &mut ChaCha8Rng, role: &str) -> String {
    let male = rng.random_bool(0.5);
    let birth_year = rng.random_range(1960..2000);
    let (first, last) = draw_name(rng, male, birth_year, false);
    format!("{role} {first} {last}")
}

/// Orders cases by department and opening date and numbers them per department and year, as a
/// case system would have; documents are numbered in date order within their case.
fn number_cases(cases: &mut [CaseRecord]) {
    cases.sort_by_key(|c| (c.department(), c.opened_on));
    let mut counters: BTreeMap<(Department, i32), u32> = BTreeMap::new();
    for case in cases.iter_mut() {
        let department = case.department();
        let year = case.opened_on.year();
        let counter = counters.entry((department, year)).or_insert(0);
        *counter += 1;
        case.case_id = format!("{}-{year}-{counter:06}", department.case_prefix());
        for (i, document) in case.documents.iter_mut().enumerate() {
            document.document_id = format!("{}-D{:02}", case.case_id, i + 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

/// Between `fewest` and `most` distinct items (fewer if the table is shorter), in table order so
/// that sentences picked for one text keep the order they were written to be read in.
fn pick_some<'a, T>(
    rng: &mut ChaCha8Rng,
    items: &'a [T],
    fewest: usize,
    most: usize,
) -> impl Iterator<Item = &'a T> + use<'a, T> {
    let count = rng.random_range(fewest..=most).min(items.len());
    let mut chosen = index::sample(rng, items.len(), count).into_vec();
    chosen.sort_unstable();
    chosen.into_iter().filter_map(|i| items.get(i))
}

// `generate` rejects reference dates outside REFERENCE_YEARS, so every date computed here stays
// centuries inside chrono's range and the fallbacks are never taken.

fn add_days(date: NaiveDate, days: i64) -> NaiveDate {
    date.checked_add_signed(TimeDelta::days(days))
        .unwrap_or(date)
}

fn add_years(date: NaiveDate, years: i64) -> NaiveDate {
    let months = Months::new(u32::try_from(years.unsigned_abs() * 12).unwrap_or(0));
    if years >= 0 {
        date.checked_add_months(months)
    } else {
        date.checked_sub_months(months)
    }
    .unwrap_or(date)
}

fn days_between(from: NaiveDate, to: NaiveDate) -> i64 {
    (to - from).num_days().max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_table_parses() {
        let library = Library::load();
        assert!(library.is_ok(), "{:?}", library.err());
    }

    #[test]
    fn profile_counts_add_up_to_the_reports_volumes() {
        let count = |plan| -> u64 {
            let holding = |p: &Profile| p.plans.iter().filter(|&&q| q == plan).count() as u64;
            PROFILES.iter().map(|p| p.per_reference * holding(p)).sum()
        };
        assert_eq!(
            [Lab27, Lab30a, Sl140, Sl141, Il19, Sl54, Sl57c, Sl12a].map(count),
            [5200, 750, 375, 225, 225, 35, 30, 1]
        );
        for always in ALWAYS_PRESENT {
            assert!(PROFILES.iter().any(|p| p.plans == *always));
        }
    }

    #[test]
    fn first_names_say_the_gender_the_cpr_number_says() {
        let is_in = |lists: [&[&str]; 3], name: &str| lists.iter().any(|l| l.contains(&name));
        let male = [MALE_NAMES_OLDER, MALE_NAMES_YOUNGER, MALE_NAMES_NON_DANISH];
        let female = [
            FEMALE_NAMES_OLDER,
            FEMALE_NAMES_YOUNGER,
            FEMALE_NAMES_NON_DANISH,
        ];
        let citizens = generate(&SynthConfig::new(11, 5_000)).map(|d| d.citizens);
        assert!(citizens.as_ref().is_ok_and(|c| c.len() == 5_000));
        for citizen in citizens.unwrap_or_default() {
            let first = citizen.name.split(' ').next().unwrap_or_default();
            let odd = citizen
                .cpr
                .bytes()
                .last()
                .is_some_and(|d| (d - b'0') % 2 == 1);
            assert_eq!(is_in(male, first), odd, "{}", citizen.name);
            assert_eq!(is_in(female, first), !odd, "{}", citizen.name);
        }
    }

    #[test]
    fn mail_local_parts_are_ascii() {
        assert_eq!(mail_local("Søren"), "soeren");
        assert_eq!(mail_local("Lærke"), "laerke");
        assert_eq!(mail_local("Østergaard"), "oestergaard");
        assert_eq!(mail_local("Al-Khatib"), "al-khatib");
    }
}
