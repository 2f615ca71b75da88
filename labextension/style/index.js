import './base.css';
import './team.css';
import './taskdetail.css';
